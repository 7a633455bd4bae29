"""services.accounting.enforce on real SQLite files and a real PostgreSQL cluster: budget
levels and events from usage written through the store (as the meter does), an admin's
raise, the notices users get, and the hub's hooks (refuse a spawn, stop after the grace).

The spawner given to the hooks is a stand-in with the attributes the hooks read (the hub's
real spawner is exercised in tests/integration/test_accounting_enforce.py)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from traitlets.config import Config, Configurable

from twinhub import db
from twinhub.db.models import BudgetState, EnforcementEvent
from twinhub.gateway import budget
from twinhub.services.accounting import enforce
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.readings import Reading, Source
from twinhub.services.accounting.store import UsageStore
from twinhub.services.projects import allocations
from twinhub.services.projects.catalog import ProjectCatalog
from twinhub.services.projects.overrides import set_override
from twinhub.spawn import profiles

T0 = datetime(2026, 3, 1, tzinfo=UTC)
P = profiles.validate_profiles([{"slug": "small", "default": True}, {"slug": "gpu", "gpu": True}])
SETTINGS = TwinhubAccounting(grace=60.0)


@pytest.fixture
def db_url(twinhub_db: str) -> str:  # tests/fixtures/postgres.py: SQLite and PostgreSQL
    return twinhub_db


def catalog(db_url: str) -> ProjectCatalog:
    return ProjectCatalog(
        profiles=P,
        configured=allocations.validate_projects(
            {"climate": {"cpu_hours": 1.0, "gpu": True, "gpu_hours": 5}, "ocean": {}}, P
        ),
        default=allocations.validate_allocation(allocations.DEFAULTS, P),
        db_url=db_url,
    )


class Burner:
    """CPU used by one server charged to ``climate``, written through the store."""

    def __init__(self, db_url: str) -> None:
        model = EnergyModel(
            cpu_watts=4.0, memory_watts_per_gib=0.5, gpu_watts=None, pue=1.0, carbon_intensity=1.0
        )
        self.store = UsageStore(db_url, model, interval=30)
        self.source = Source("server:ada/#abc", "ada", "climate", "server", started_at=T0)
        self.core_s, self.at = 0.0, T0
        self.store.apply([self._reading()])

    def _reading(self) -> Reading:
        return Reading(self.source, "cpu", "counter", self.core_s, "cgroup", self.at)

    def to_hours(self, hours: float) -> None:
        self.core_s, self.at = hours * 3600, self.at + timedelta(minutes=1)
        self.store.apply([self._reading()])


def states(db_url: str) -> dict[tuple[str, str], BudgetState]:
    with db.session(db_url) as s:
        return {(r.project, r.budget): r for r in s.scalars(select(BudgetState))}


def event_rows(db_url: str) -> list[tuple[str, str, str]]:
    with db.session(db_url) as s:
        rows = s.scalars(select(EnforcementEvent).order_by(EnforcementEvent.id))
        return [(e.project, e.budget, e.action) for e in rows]


def test_levels_events_and_an_admin_raise(db_url) -> None:
    cat, burn = catalog(db_url), Burner(db_url)
    assert enforce.evaluate(db_url, cat, SETTINGS, T0) == []
    st = states(db_url)
    assert set(st) == {("climate", "cpu_hours"), ("climate", "gpu_hours")}  # ocean: no budget
    assert st[("climate", "cpu_hours")].level == 0

    burn.to_hours(0.85)
    (ev,) = enforce.evaluate(db_url, cat, SETTINGS, T0 + timedelta(minutes=1))
    assert (ev["project"], ev["budget"], ev["action"], ev["level"]) == (
        "climate",
        "cpu_hours",
        "warning",
        80,
    )
    assert ev["message"] == "project climate used 0.85 of 1 CPU-hours (80 % warning)"
    burn.to_hours(0.96)
    (ev,) = enforce.evaluate(db_url, cat, SETTINGS, T0 + timedelta(minutes=2))
    assert ev["level"] == 95

    burn.to_hours(1.023)
    over_at = T0 + timedelta(minutes=3)
    (ev,) = enforce.evaluate(db_url, cat, SETTINGS, over_at)
    assert ev["action"] == "exhausted" and ev["level"] == 100
    assert ev["message"].startswith("project climate used 1.02 of 1 CPU-hours; servers and Dask")
    row = states(db_url)[("climate", "cpu_hours")]
    assert row.level == 100 and row.used == pytest.approx(1.023) and row.limit == 1.0
    assert enforce._utc(row.over_since) == over_at
    # Still over at the next tick: no new event, the grace still counts from over_at.
    burn.to_hours(1.05)
    assert enforce.evaluate(db_url, cat, SETTINGS, over_at + timedelta(minutes=1)) == []
    assert enforce._utc(states(db_url)[("climate", "cpu_hours")].over_since) == over_at
    assert enforce.spawn_refusal(db_url, "climate", ["cpu_hours"]) == (
        "project climate used 1.05 of 1 CPU-hours; ask an admin to raise it"
    )
    assert enforce.spawn_refusal(db_url, "climate", ["gpu_hours"]) is None
    assert enforce.spawn_refusal(db_url, "ocean", ["cpu_hours"]) is None

    # An admin raises it (the projects API stores an override): applies at the next tick.
    set_override(db_url, "climate", {**cat.allocations()["climate"], "cpu_hours": 10}, "admin")
    (ev,) = enforce.evaluate(db_url, cat, SETTINGS, over_at + timedelta(minutes=2))
    assert ev["action"] == "cleared" and ev["level"] == 0
    row = states(db_url)[("climate", "cpu_hours")]
    assert row.level == 0 and row.over_since is None and row.limit == 10
    assert enforce.spawn_refusal(db_url, "climate", ["cpu_hours"]) is None

    # The budget unset: its state goes (nothing held any more).
    set_override(db_url, "climate", {**cat.allocations()["climate"], "cpu_hours": None}, "admin")
    enforce.evaluate(db_url, cat, SETTINGS, over_at + timedelta(minutes=3))
    assert ("climate", "cpu_hours") not in states(db_url)
    assert event_rows(db_url) == [
        ("climate", "cpu_hours", "warning"),
        ("climate", "cpu_hours", "warning"),
        ("climate", "cpu_hours", "exhausted"),
        ("climate", "cpu_hours", "cleared"),
    ]


def test_user_notices(db_url) -> None:
    cat, burn = catalog(db_url), Burner(db_url)
    burn.to_hours(0.9)
    enforce.evaluate(db_url, cat, SETTINGS, T0)
    (n,) = enforce.user_notices(db_url, "ada", ["climate", "ocean"], grace=60)
    assert n["kind"] == "budget" and n["level"] == 80 and n["stop_at"] is None
    assert n["used"] == pytest.approx(0.9) and n["limit"] == 1.0
    burn.to_hours(1.2)
    enforce.evaluate(db_url, cat, SETTINGS, T0 + timedelta(minutes=5))
    (n,) = enforce.user_notices(db_url, "ada", ["climate"], grace=60)
    assert n["level"] == 100
    assert n["stop_at"] == (T0 + timedelta(minutes=5, seconds=60)).isoformat()
    assert "ask an admin to raise it" in n["message"]
    assert enforce.user_notices(db_url, "ada", ["ocean"]) == []


def _spawner(
    project: str,
    *,
    profile: dict | None = None,
    mine: list[dict] | None = None,
    user_options: dict | None = None,
    accounting_dir: str = "",
) -> SimpleNamespace:
    async def projects_for_user():
        return ["climate", "ocean"]

    async def profiles_for_user():  # what the user's projects allow (default: every one)
        return P if mine is None else mine

    return SimpleNamespace(
        user=SimpleNamespace(name="ada", groups=[SimpleNamespace(name="climate")]),
        name="",
        project=project,
        user_options=user_options or {},
        personal_project="personal",
        profiles=P,
        detect_gpu=False,
        profile=profile or {},
        accounting_dir=accounting_dir,
        log=logging.getLogger("test"),
        _log_name="ada",
        projects_for_user=projects_for_user,
        profiles_for_user=profiles_for_user,
    )


def test_hub_hooks_refuse_then_stop_after_the_grace(db_url) -> None:
    cat, burn = catalog(db_url), Burner(db_url)
    hooks = enforce.BudgetEnforcer(db_url, grace=60.0)
    s = _spawner("climate")
    assert asyncio.run(hooks.spawn_check(s, "")) is None
    assert asyncio.run(hooks.running_check(s)) is None

    burn.to_hours(1.5)
    now = datetime.now(UTC)
    enforce.evaluate(db_url, cat, SETTINGS, now)
    why = asyncio.run(hooks.spawn_check(s, "small"))
    assert why == "project climate used 1.5 of 1 CPU-hours; ask an admin to raise it"
    # Another project of the user's is not held against climate's budget.
    assert asyncio.run(hooks.spawn_check(_spawner("ocean"), "small")) is None
    # Within the grace: keeps running.
    assert asyncio.run(hooks.running_check(s)) is None

    # Over for longer than the grace (the state says since when): stopped, recorded.
    with db.session(db_url) as ses:
        ses.get(BudgetState, ("climate", "cpu_hours")).over_since = now - timedelta(seconds=61)
    why = asyncio.run(hooks.running_check(s))
    assert why == (
        "project climate used 1.5 of 1 CPU-hours and stayed over for more than the grace of "
        "60 s; ask an admin to raise it"
    )
    assert event_rows(db_url)[-2:] == [
        ("climate", "cpu_hours", "refused"),
        ("climate", "cpu_hours", "stopped"),
    ]
    assert asyncio.run(hooks.running_check(_spawner("ocean"))) is None
    (stop,) = [n for n in enforce.user_notices(db_url, "ada", []) if n["kind"] == "stopped"]
    assert stop["message"] == why and stop["server"] == ""

    # The projects' own hooks run first and win.
    inner = enforce.BudgetEnforcer(
        db_url, 60.0, lambda sp, slug: "too many servers", lambda sp: "profile gone"
    )
    assert asyncio.run(inner.spawn_check(_spawner("ocean"), "")) == "too many servers"
    assert asyncio.run(inner.running_check(_spawner("ocean"))) == "profile gone"


def test_gpu_budget_binds_gpu_profiles_only(db_url) -> None:
    cat = catalog(db_url)
    store = Burner(db_url).store
    src = Source("server:ada/g#x", "ada", "climate", "named-server", "g", started_at=T0)
    store.apply([Reading(src, "gpu", "gauge", 1.0, "allocation", T0)])
    store.apply([Reading(src, "gpu", "gauge", 1.0, "allocation", T0 + timedelta(seconds=59))])
    # 59 GPU-s of 5 GPU-hours: nowhere near; then an admin cuts the budget to nothing.
    set_override(db_url, "climate", {**cat.allocations()["climate"], "gpu_hours": 0.01}, "admin")
    enforce.evaluate(db_url, cat, SETTINGS, T0 + timedelta(minutes=1))
    hooks = enforce.BudgetEnforcer(db_url, grace=60.0)
    assert asyncio.run(hooks.spawn_check(_spawner("climate"), "small")) is None
    assert asyncio.run(hooks.spawn_check(_spawner("climate"), "gpu")) == (
        "project climate used 0.0164 of 0.01 GPU-hours; ask an admin to raise it"
    )


def test_charged_project_after_a_hub_restart_comes_from_the_charge_file(tmp_path) -> None:
    from twinhub.services.projects.enforce import charged_project
    from twinhub.spawn import charges

    d = tmp_path / "charges"
    charges.write(d, charges.Charge("server:ada/#1", "ada", "beta", "server", "", T0))
    charges.write(d, charges.Charge("server:ada/x#2", "ada", "gamma", "server", "x", T0))
    # A fresh spawner object (the hub restarted): no project in memory, the default chosen
    # at spawn (nothing in user_options).
    s = SimpleNamespace(
        project="",
        accounting_dir=str(d),
        user=SimpleNamespace(name="ada"),
        name="",
        user_options={},
    )
    assert charged_project(s) == "beta" and s.project == "beta"  # remembered
    s.name, s.project = "x", ""
    assert charged_project(s) == "gamma"
    # No charge file (accounting off): what user_options kept, else unknown.
    s = SimpleNamespace(project="", user_options={"project": "alpha"})
    assert charged_project(s) == "alpha"
    s.user_options = {}
    assert charged_project(s) == ""


# -- the profile a budget check sees (review finding 7) ---------------------------------------
def _gpu_over_budget(db_url: str) -> None:
    """climate's GPU budget used up, for longer than the grace (its CPU budget is not)."""
    cat = catalog(db_url)
    store = Burner(db_url).store
    src = Source("server:ada/#gpu", "ada", "climate", "server", started_at=T0)
    store.apply([Reading(src, "gpu", "gauge", 1.0, "allocation", T0)])
    store.apply([Reading(src, "gpu", "gauge", 1.0, "allocation", T0 + timedelta(seconds=59))])
    set_override(db_url, "climate", {**cat.allocations()["climate"], "gpu_hours": 0.01}, "admin")
    enforce.evaluate(db_url, cat, SETTINGS, datetime.now(UTC) - timedelta(seconds=120))


GPU_STOP = (
    "project climate used 0.0164 of 0.01 GPU-hours and stayed over for more than the grace "
    "of 60 s; ask an admin to raise it"
)


def test_after_a_hub_restart_a_gpu_server_over_its_gpu_budget_is_still_stopped(
    db_url, tmp_path
) -> None:
    from twinhub.spawn import charges

    _gpu_over_budget(db_url)
    hooks = enforce.BudgetEnforcer(db_url, grace=60.0)
    # Before the restart the spawner knows its profile.
    assert asyncio.run(hooks.running_check(_spawner("climate", profile=P[1]))) == GPU_STOP
    assert asyncio.run(hooks.running_check(_spawner("climate", profile=P[0]))) is None
    # After it (a new spawner object: no profile in memory): the slug JupyterHub kept in
    # user_options, else the open charge file's profile and GPU count.
    kept = _spawner("climate", user_options={"profile": "gpu", "project": "climate"})
    assert asyncio.run(hooks.running_check(kept)) == GPU_STOP
    d = tmp_path / "charges"
    charges.write(
        d, charges.Charge("server:ada/#1", "ada", "climate", "server", "", T0, profile="small")
    )
    s = _spawner("", accounting_dir=str(d), mine=[P[1]])
    assert asyncio.run(hooks.running_check(s)) is None  # a CPU server (the charge says so)
    # A GPU profile since removed from the configuration: its GPU count still says GPU.
    charges.write(
        d,
        charges.Charge("server:ada/#1", "ada", "climate", "server", "", T0, profile="old", gpus=1),
    )
    s = _spawner("", accounting_dir=str(d), mine=[P[0]])
    assert asyncio.run(hooks.running_check(s)) == GPU_STOP
    charges.write(
        d, charges.Charge("server:ada/#1", "ada", "climate", "server", "", T0, profile="gpu")
    )
    assert asyncio.run(hooks.running_check(_spawner("", accounting_dir=str(d)))) == GPU_STOP


def test_spawn_without_a_profile_is_checked_against_the_users_default(db_url) -> None:
    _gpu_over_budget(db_url)
    hooks = enforce.BudgetEnforcer(db_url, grace=60.0)
    # The user may start only the GPU profile: it is the default they get, so its budget.
    only_gpu = _spawner("climate", mine=[P[1]])
    why = "project climate used 0.0164 of 0.01 GPU-hours; ask an admin to raise it"
    assert asyncio.run(hooks.spawn_check(only_gpu, "")) == why
    assert asyncio.run(hooks.spawn_check(_spawner("climate"), "")) is None  # small: CPU only


# -- the gateway's own checks (review finding 2) --------------------------------------------
class FakeCluster:
    """A fake of dask-gateway-server's cluster record: what gateway.budget reads."""

    def __init__(self, name: str, project: str | None, workers: int = 0) -> None:
        self.name, self.username, self.workers = name, "ada", workers
        self.options = {"project": project} if project else {}
        self.stopped = False

    def active_workers(self) -> list[int]:
        return list(range(self.workers))


class FakeGatewayBackend(Configurable):
    """A fake of dask-gateway-server's DBBackendBase, as gateway.budget uses it: its
    in-memory cluster table (``db``), reconcile queue, task pool and ``stop_cluster``."""

    def __init__(self, clusters: list[FakeCluster], **kw) -> None:
        super().__init__(**kw)
        self.clusters = {c.name: c for c in clusters}
        self.queued: list[str] = []
        self.log = logging.getLogger("test.gateway")
        self.db = SimpleNamespace(
            active_clusters=lambda: [c for c in self.clusters.values() if not c.stopped],
            get_cluster=self.clusters.get,
        )
        self.queue = SimpleNamespace(put=lambda c: self.queued.append(c.name))
        self.task_pool = SimpleNamespace(spawn=self._spawn)
        self.loop_started = False

    def _spawn(self, coro):
        self.loop_started = True
        try:
            return asyncio.ensure_future(coro)
        except RuntimeError:  # no event loop: the test calls check() itself
            coro.close()
            return None

    async def stop_cluster(self, name: str, failed: bool = False) -> None:
        self.clusters[name].stopped = True


def _gateway(db_url: str, clusters: list[FakeCluster], interval: float = 30) -> FakeGatewayBackend:
    # As configure_gateway sets it from TwinhubAccounting.
    cfg = Config({"TwinhubGatewayBudget": {"db_url": db_url, "grace": 60.0, "interval": interval}})
    return FakeGatewayBackend(clusters, config=cfg)


def _over_since(db_url: str, seconds_ago: float) -> None:
    with db.session(db_url) as ses:
        ses.get(BudgetState, ("climate", "cpu_hours")).over_since = datetime.now(UTC) - timedelta(
            seconds=seconds_ago
        )


def test_gateway_blocks_scaling_then_stops_clusters_without_any_server(db_url) -> None:
    cat, burn = catalog(db_url), Burner(db_url)
    big, other, plain = (
        FakeCluster("c1", "climate", 2),
        FakeCluster("c2", "ocean"),
        FakeCluster("c3", None),
    )
    gw = _gateway(db_url, [big, other, plain])
    b = budget.start(gw)
    assert b.enabled and b.grace == 60.0 and b.personal_project == "personal"
    assert gw.loop_started
    assert asyncio.run(b.check(gw)) == [] and b.blocked == {}
    assert budget.may_add_workers(gw, big)

    burn.to_hours(1.5)
    enforce.evaluate(db_url, cat, SETTINGS, datetime.now(UTC))
    assert asyncio.run(b.check(gw)) == []  # within the grace: runs on, but grows no more
    assert set(b.blocked) == {"climate"}
    assert not budget.may_add_workers(gw, big) and budget.may_add_workers(gw, other)
    why = budget.message_refusal(gw, big, {"op": "scale", "count": 3})
    assert why == (
        "project climate used 1.5 of 1 CPU-hours: its Dask clusters get no new workers (and "
        "stop after the grace of 60 s); ask an admin to raise it"
    )
    assert budget.message_refusal(gw, big, {"op": "scale", "count": 1}) is None  # down: fine
    assert budget.message_refusal(gw, big, {"op": "adapt", "minimum": 0, "maximum": 4}) == why
    assert budget.message_refusal(gw, big, {"op": "adapt", "active": False}) is None
    assert budget.message_refusal(gw, other, {"op": "scale", "count": 9}) is None

    # An admin raises it: at the next check the cluster may grow again (re-queued).
    set_override(db_url, "climate", {**cat.allocations()["climate"], "cpu_hours": 10}, "admin")
    enforce.evaluate(db_url, cat, SETTINGS)
    asyncio.run(b.check(gw))
    assert b.blocked == {} and gw.queued == ["c1"] and budget.may_add_workers(gw, big)

    # Back to 1 CPU-hour, over for longer than the grace: stopped, recorded; others run on.
    set_override(db_url, "climate", {**cat.allocations()["climate"], "cpu_hours": 1}, "admin")
    enforce.evaluate(db_url, cat, SETTINGS)
    _over_since(db_url, 61)
    assert asyncio.run(b.check(gw)) == ["c1"]
    assert big.stopped and not other.stopped and not plain.stopped
    with db.session(db_url) as s:
        (e,) = s.scalars(select(EnforcementEvent).where(EnforcementEvent.action == "stopped"))
        assert (e.project, e.budget, e.user, e.cluster, e.server) == (
            "climate",
            "cpu_hours",
            "ada",
            "c1",
            None,
        )
        assert e.message == (
            "Dask cluster c1 charged to project climate: project climate used 1.5 of 1 "
            "CPU-hours and stayed over for more than the grace of 60 s; ask an admin to raise it"
        )
    assert asyncio.run(b.check(gw)) == []  # stopped once


def test_gateway_check_runs_periodically_and_is_off_without_accounting(db_url) -> None:
    cat, burn = catalog(db_url), Burner(db_url)
    burn.to_hours(1.5)
    enforce.evaluate(db_url, cat, SETTINGS)
    _over_since(db_url, 61)
    c = FakeCluster("c1", "climate", 1)

    async def scenario(gw: FakeGatewayBackend, tries: int) -> bool:
        b = budget.start(gw)
        for _ in range(tries):
            if c.stopped:
                break
            await asyncio.sleep(0.05)
        if b._task is not None:
            b._task.cancel()
        return c.stopped

    assert asyncio.run(scenario(_gateway(db_url, [c], interval=0.1), 100))
    c.stopped = False
    off = FakeGatewayBackend([c])  # no db_url: accounting off
    assert not asyncio.run(scenario(off, 10))
    assert (
        budget.may_add_workers(off, c) and budget.message_refusal(off, c, {"op": "adapt"}) is None
    )
