"""The accounting service's rules for who reads which usage, its parameters, its
Prometheus text and its part (the pure parts; the service itself is tested on the real
platform in tests/integration/test_accounting_api.py)."""

from __future__ import annotations

import csv
import io
import stat
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from traitlets.config import Config

from twinhub.errors import StartError
from twinhub.process.runtime import Runtime
from twinhub.services.accounting import AccountingPart, access, app, charges_dir, metrics
from twinhub.services.accounting.access import Caller, Refused, UsageRequest

ALICE = Caller("alice", "user", admin=False, groups=frozenset({"climate", "misc-group"}))
ADMIN = Caller("root", "user", admin=True, groups=frozenset())
SERVICE = Caller("dashboard", "service", admin=False, groups=frozenset())
ADMIN_SERVICE = Caller("dashboard", "service", admin=True, groups=frozenset())


def parse(**q: str) -> UsageRequest:
    return access.parse_request(list(q.items()))


# -- parameters ------------------------------------------------------------------------------
def test_no_parameters_mean_the_defaults():
    assert parse() == UsageRequest()


def test_times_are_iso_8601_and_naive_means_utc():
    r = parse(start="2026-01-31", end="2026-02-01T12:00:00+02:00")
    assert r.start == datetime(2026, 1, 31, tzinfo=UTC)
    assert r.end == datetime(2026, 2, 1, 10, tzinfo=UTC)
    assert parse(start="2026-01-31T00:00:00Z").start == datetime(2026, 1, 31, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"start": "yesterday"}, "start="),
        ({"end": "2026-13-01"}, "end="),
        ({"format": "xml"}, "format="),
        ({"by": "user"}, "by="),
        ({"by": "member"}, "by=member needs project="),
        ({"start": "2026-02-01", "end": "2026-01-01"}, "must be before end"),
        ({"usr": "alice"}, "unknown parameter 'usr'"),
        ({"user": "x" * 300}, "longer than"),
    ],
)
def test_bad_parameters_are_400_naming_them(query, names):
    with pytest.raises(Refused) as e:
        parse(**query)
    assert e.value.status == 400
    assert names in e.value.message


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00+01:00",  # astimezone overflows
        "9999-12-31T23:30",  # the series arithmetic would overflow
        "9999-12-31T23:30-01:00",
        "1969-12-31T23:59:59Z",
        "2200-01-01",
    ],
)
def test_times_far_out_are_400_naming_the_range(value):
    for name in ("start", "end"):
        with pytest.raises(Refused) as e:
            parse(**{name: value})
        assert e.value.status == 400
        assert f"{name}={value!r} is out of range" in e.value.message
        assert "1970-01-01" in e.value.message and "2200-01-01" in e.value.message
    assert parse(start="1970-01-01", end="2199-12-31T23:59:59Z").end == datetime(
        2199, 12, 31, 23, 59, 59, tzinfo=UTC
    )


def test_a_repeated_parameter_is_400():
    with pytest.raises(Refused, match="more than once") as e:
        access.parse_request([("user", "alice"), ("user", "bob")])
    assert e.value.status == 400


# -- who sees what ---------------------------------------------------------------------------
def test_a_user_reads_their_own_usage_by_default():
    assert access.authorize(ALICE, parse()).user == "alice"
    assert access.authorize(ALICE, parse(user="alice")).user == "alice"


def test_a_member_reads_their_projects_totals_and_their_share():
    assert access.authorize(ALICE, parse(project="climate")) == parse(project="climate")
    r = access.authorize(ALICE, parse(project="climate", user="alice"))
    assert (r.user, r.project) == ("alice", "climate")


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"user": "bob"}, "reading the usage of 'bob'"),
        ({"project": "climate", "user": "bob"}, "in project 'climate'"),
        ({"project": "climate", "by": "member"}, "per-member breakdown"),
        ({"project": "other"}, "its membership"),
    ],
)
def test_anything_else_is_403_naming_the_scope(query, names):
    with pytest.raises(Refused) as e:
        access.authorize(ALICE, parse(**query))
    assert e.value.status == 403
    assert "'admin:users'" in e.value.message
    assert names in e.value.message
    assert "'alice'" in e.value.message


def test_admins_read_anyone_and_breakdowns():
    for q in ({"user": "bob"}, {"project": "other", "by": "member"}, {"project": "x"}):
        assert access.authorize(ADMIN, parse(**q)) == parse(**q)
    assert access.authorize(ADMIN, parse()).user == "root"


def test_services_need_the_admin_scope_and_a_scope():
    with pytest.raises(Refused) as e:
        access.authorize(SERVICE, parse(user="alice"))
    assert e.value.status == 403
    with pytest.raises(Refused) as e:
        access.authorize(ADMIN_SERVICE, parse())
    assert e.value.status == 400
    assert access.authorize(ADMIN_SERVICE, parse(user="alice")).user == "alice"


def test_admin_power_comes_from_the_token_not_the_flag_alone():
    """An admin whose token is narrowed to the service's access scope reads as a user."""
    narrowed = {"name": "root", "kind": "user", "scopes": ["access:services!service=x"]}
    full = {**narrowed, "scopes": ["admin:users", "access:services"]}
    model = {"name": "root", "admin": True, "groups": ["g"]}
    assert not access.caller_from(narrowed, model).admin
    assert access.caller_from(full, model).admin
    assert not access.caller_from(full, {**model, "admin": False}).admin
    assert access.caller_from(full, model).groups == {"g"}


def test_budgets_are_of_the_project_asked_or_the_users_projects():
    projects = {"climate": {}, "gpu-lab": {}}
    assert access.budget_projects(parse(), ALICE.groups, projects) == ["climate"]
    assert access.budget_projects(parse(project="gpu-lab"), ALICE.groups, projects) == ["gpu-lab"]
    assert access.budget_projects(parse(project="nope"), ALICE.groups, projects) == []


# -- metrics ---------------------------------------------------------------------------------
def families(usage, budgets, ticks) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics._Collector(usage, budgets, ticks))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_have_the_issues_names_types_help_and_labels():
    row = {"user": "alice", "project": "climate"}
    row.update({col: float(i + 1) for i, col in enumerate(metrics.USAGE)})
    ticks = metrics.TickStats()
    ticks.ticked(1_700_000_000.0, 0.2)
    ticks.failed("meter", RuntimeError("x"))
    ticks.ticked(1_700_000_015.0, 12.0)
    budgets = {"climate": {"cpu_hours": {"used": 25.0, "limit": 100.0, "fraction": 0.25}}}
    fams = families([row], budgets, ticks)
    for name in (
        "twinhub_usage_cpu_seconds",
        "twinhub_usage_memory_gib_seconds",
        "twinhub_usage_gpu_seconds",
        "twinhub_usage_energy_joules",
        "twinhub_usage_co2e_grams",
    ):
        f = fams[name]  # the parser drops _total from a counter family's name
        assert f.type == "counter"
        assert f.documentation
        (sample,) = f.samples
        assert sample.name == name + "_total"
        assert set(sample.labels) == {"user", "project", "resource"}
        assert sample.labels["user"] == "alice"
    assert fams["twinhub_usage_cpu_seconds"].samples[0].value == 1.0
    assert fams["twinhub_usage_cpu_seconds"].samples[0].labels["resource"] == "cpu"
    (left,) = fams["twinhub_budget_remaining_ratio"].samples
    assert left.labels == {"project": "climate", "budget": "cpu_hours"}
    assert left.value == pytest.approx(0.75)
    assert fams["twinhub_accounting_last_tick_timestamp_seconds"].samples[0].value == (
        1_700_000_015.0
    )
    hist = {s.labels.get("le"): s.value for s in fams["twinhub_accounting_tick_seconds"].samples
            if s.name.endswith("_bucket")}  # fmt: skip
    assert hist["0.25"] == 1 and hist["10.0"] == 1 and hist["+Inf"] == 2
    failures = {s.labels["step"]: s.value for s in fams["twinhub_accounting_tick_failures"].samples}
    assert failures["meter"] == 1 and failures["budgets"] == 0
    assert ticks.summary()["consecutive_failures"] == 1
    assert all(f.documentation for f in fams.values())


def test_health_says_which_step_failed_and_the_exceptions_class_only():
    """``health`` is public: no SQL, parameters or host names from the exception's text."""
    ticks = metrics.TickStats()
    assert ticks.summary()["last_error"] is None and ticks.summary()["failed_step"] is None
    secret = "(psycopg.OperationalError) connection to db.internal:5432 password=hunter2"
    ticks.failed("budgets", RuntimeError(secret))
    ticks.ticked(1_700_000_000.0, 0.1)
    out = ticks.summary()
    assert out["failed_step"] == "budgets"
    assert out["last_error"] == "budgets: RuntimeError"
    text = repr(out)
    assert "hunter2" not in text and "db.internal" not in text and "psycopg" not in text


def test_an_over_budget_project_has_nothing_left_not_less():
    budgets = {"p": {"cpu_hours": {"used": 130.0, "limit": 100.0, "fraction": 1.3}}}
    fams = families([], budgets, metrics.TickStats())
    assert fams["twinhub_budget_remaining_ratio"].samples[0].value == 0.0


# -- the part ----------------------------------------------------------------------------------
def test_the_part_is_on_in_multi_user_mode_only_by_default(tmp_path):
    multi = Runtime(state_dir=tmp_path, mode="multi-user")
    assert AccountingPart().enabled(multi)
    assert not AccountingPart().enabled(Runtime(state_dir=tmp_path, mode="personal"))
    off = Config()
    off.TwinhubAccounting.enabled = False
    assert not AccountingPart().enabled(Runtime(state_dir=tmp_path, config=off, mode="multi-user"))


def test_prepare_makes_a_private_charges_dir_and_refuses_bad_settings(tmp_path):
    rt = Runtime(state_dir=tmp_path, mode="multi-user")
    AccountingPart().prepare_service(rt, print)
    d = charges_dir(rt)
    assert d == tmp_path / "run" / "accounting" / "charges"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(d.parent.stat().st_mode) == 0o700
    bad = Config()
    bad.TwinhubAccounting.interval = 60.0
    with pytest.raises(StartError, match="interval"):
        AccountingPart().prepare_service(Runtime(state_dir=tmp_path, config=bad), print)


def test_the_hub_config_points_spawners_at_the_charges_and_wraps_the_spawn_hooks(tmp_path):
    rt = Runtime(state_dir=tmp_path, mode="multi-user")
    c = Config()

    async def projects_check(spawner, slug):  # what ProjectsPart set before
        return None

    c.TwinhubSpawner.spawn_check = projects_check
    AccountingPart().configure_service(c, rt)
    assert c.TwinhubSpawner.accounting_dir == str(charges_dir(rt))
    wrapped = c.TwinhubSpawner.spawn_check
    assert wrapped is not projects_check and wrapped.__self__.inner_spawn_check is projects_check
    assert c.TwinhubSpawner.personal_project == "personal"


# -- the app's CSV and its cache of the hub's user models ---------------------------------------
def test_csv_cells_that_spreadsheets_read_as_formulas_are_written_as_text():
    figures = {"cpu_core_hours": -1.5, "energy_kwh": 0.25}
    doc = {
        "project": "climate",
        "start": "2026-01-01T00:00:00+00:00",
        "end": "2026-02-01T00:00:00+00:00",
        "members": {
            name: figures
            for name in ('=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "bob")
        },
    }
    rows = list(csv.DictReader(io.StringIO(app.to_csv(doc), newline="")))
    users = [row["user"] for row in rows]
    assert users == [
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'-2+3",
        "'@SUM(A1)",
        "'\tx",
        "'\rx",
        "bob",
    ]
    # figures stay numbers (a negative one is not a string, so not prefixed); dates as they are
    assert {row["cpu_core_hours"] for row in rows} == {"-1.5"}
    assert {row["start"] for row in rows} == {"2026-01-01T00:00:00+00:00"}


def test_user_models_are_reused_for_their_ttl_and_bounded(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(app.time, "monotonic", lambda: clock[0])
    models = app.UserModels(ttl=30.0, size=2)
    assert models.get("alice") == (False, None)
    models.put("alice", {"name": "alice", "groups": ["climate"]})
    models.put("ghost", None)  # "no such user" is remembered too
    assert models.get("alice") == (True, {"name": "alice", "groups": ["climate"]})
    assert models.get("ghost") == (True, None)
    clock[0] += 29.9
    assert models.get("alice")[0]
    clock[0] += 0.2
    assert models.get("alice") == (False, None)  # stale: asked of the hub again
    models.put("alice", {"name": "alice", "groups": []})
    models.put("bob", {"name": "bob"})  # over the size: the oldest (ghost) goes
    assert models.get("ghost") == (False, None)
    assert models.get("alice") == (True, {"name": "alice", "groups": []})
    assert app.USER_MODEL_TTL == 30.0
