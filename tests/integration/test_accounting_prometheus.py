"""The Kubernetes meter backend against a real Prometheus (Debian's ``/usr/bin/prometheus``)
scraping a FAKE cAdvisor/kube-state-metrics exporter every second (tests/fixtures/prometheus.py:
there is no Kubernetes here)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from kubespawner.slugs import is_valid_label, safe_slug
from sqlalchemy import select

from tests.fixtures.prometheus import SCRAPE_INTERVAL
from tests.helpers.fake_cadvisor import FakeCadvisorExporter
from twinhub import db
from twinhub.db.models import UsageRecord
from twinhub.services.accounting import backend_prometheus
from twinhub.services.accounting.backend_prometheus import GIB, PrometheusBackend
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.meter import Meter, to_source
from twinhub.services.accounting.readings import (
    CLUSTER,
    CPU,
    DASK_WORKER,
    MEMORY,
    NAMED_SERVER,
    SERVER,
    MeteredSource,
    Reading,
)
from twinhub.services.accounting.store import UsageStore
from twinhub.spawn import charges as charge_files
from twinhub.spawn.charges import Charge

pytestmark = [pytest.mark.integration]

NS = "twinhub"


def _slug(name: str) -> str:
    """A name as a label value, escaped as TwinhubKubeSpawner and the gateway escape it."""
    return safe_slug(name, is_valid=is_valid_label)


def _server_pod(user: str, project: str, server: str = "") -> dict[str, dict[str, str]]:
    """The labels and annotations TwinhubKubeSpawner gives a server's pod (the keys:
    tests/unit/hub/test_kubespawner.py)."""
    labels = {
        "hub.jupyter.org/username": _slug(user),
        "hub.jupyter.org/servername": _slug(server),
        "app.kubernetes.io/component": "singleuser-server",
        "component": "singleuser-server",
        "twinhub.io/user": _slug(user),
        "twinhub.io/project": _slug(project),
    }
    annotations = {"hub.jupyter.org/username": user, "twinhub.io/user": user}
    annotations |= {"hub.jupyter.org/servername": server} if server else {}
    annotations["twinhub.io/project"] = project
    return {"labels": labels, "annotations": annotations}


def _dask_pod(user: str, project: str, cluster: str, component: str) -> dict[str, dict[str, str]]:
    """The labels dask-gateway gives a scheduler or worker pod, with the chart's
    ``twinhub-labels`` extraConfig's labels and annotations (requests-A.md)."""
    labels = {
        "gateway.dask.org/cluster": cluster,
        "gateway.dask.org/instance": "twinhub-dask-gateway",
        "app.kubernetes.io/component": component,
        "twinhub.io/user": _slug(user),
        "twinhub.io/project": _slug(project),
    }
    annotations = {"twinhub.io/user": user, "twinhub.io/project": project}
    return {"labels": labels, "annotations": annotations}


def _metered(charge: Charge) -> MeteredSource:
    """What the meter hands its backends for a charge file."""
    return MeteredSource(to_source(charge, "personal"), charge)


def _by(readings: list[Reading]) -> dict[tuple[str, str], Reading]:
    out: dict[tuple[str, str], Reading] = {}
    for r in readings:
        key = (r.source.source_id, r.resource)
        assert key not in out, f"two readings of {key}"
        out[key] = r
    return out


@pytest.fixture
def backend(prometheus_url: str):
    b = PrometheusBackend(prometheus_url, namespace=NS)
    yield b
    b.close()


def test_two_users_cpu_and_memory_through_prometheus(cadvisor: FakeCadvisorExporter, backend):
    alice = cadvisor.add_pod(NS, "jupyter-alice", **_server_pod("alice", "ocean"))
    bob = cadvisor.add_pod(
        NS,
        "jupyter-bob--gpu",
        **_server_pod("bob", "atmos", "gpu"),
        containers=("notebook", "sidecar"),
    )
    cadvisor.set_cpu(NS, "jupyter-alice", 12.5)
    cadvisor.set_cpu(NS, "jupyter-bob--gpu", 3.25, "notebook")
    cadvisor.set_cpu(NS, "jupyter-bob--gpu", 0.75, "sidecar")
    cadvisor.set_memory(NS, "jupyter-alice", 1.5 * GIB)
    cadvisor.set_memory(NS, "jupyter-bob--gpu", 0.25 * GIB, "notebook")
    cadvisor.set_memory(NS, "jupyter-bob--gpu", 0.25 * GIB, "sidecar")
    # Not twinhub's: no user label and no charge file (e.g. kube-system's DNS, or a pod
    # in another namespace with our labels: out of the backend's namespace).
    cadvisor.add_pod(NS, "coredns-5d78c9869d-abcde", {"k8s-app": "kube-dns"})
    cadvisor.set_cpu(NS, "coredns-5d78c9869d-abcde", 99.0)
    cadvisor.add_pod("elsewhere", "jupyter-carol", **_server_pod("carol", "ocean"))
    cadvisor.set_cpu("elsewhere", "jupyter-carol", 7.0)
    cadvisor.wait_scrapes(2)

    now = datetime.now(UTC)
    got = _by(backend.read([], now))
    assert backend.last_error is None
    a_id = f"server:alice/#{alice.uid.replace('-', '')[:12]}"
    b_id = f"server:bob/gpu#{bob.uid.replace('-', '')[:12]}"
    assert set(got) == {(a_id, CPU), (a_id, MEMORY), (b_id, CPU), (b_id, MEMORY)}
    # The containers only: not the pod cgroup (container="") nor the pause container.
    assert got[(a_id, CPU)].value == 12.5
    assert got[(b_id, CPU)].value == 4.0
    assert got[(a_id, MEMORY)].value == 1.5
    assert got[(b_id, MEMORY)].value == 0.5
    a, b = got[(a_id, CPU)], got[(b_id, CPU)]
    assert (a.kind, a.method, a.at) == ("counter", "prometheus", now)
    assert got[(a_id, MEMORY)].kind == "gauge"
    assert (a.source.user, a.source.project, a.source.kind) == ("alice", "ocean", SERVER)
    # kube-state-metrics' kube_pod_start_time: when the pod's counter began.
    assert a.source.started_at == datetime.fromtimestamp(int(alice.start_time), UTC)
    assert (b.source.user, b.source.project, b.source.kind, b.source.name) == (
        "bob",
        "atmos",
        NAMED_SERVER,
        "gpu",
    )

    # Both burn on: the counters read are the new ones, each user's own.
    cadvisor.add_cpu(NS, "jupyter-alice", 2.0)
    cadvisor.add_cpu(NS, "jupyter-bob--gpu", 30.0)
    cadvisor.set_memory(NS, "jupyter-alice", 0.0)
    cadvisor.wait_scrapes(2)
    got = _by(backend.read([], datetime.now(UTC)))
    assert got[(a_id, CPU)].value == 14.5
    assert got[(b_id, CPU)].value == 34.0
    assert got[(a_id, MEMORY)].value == 0.0


def test_a_burning_pod_is_read_within_one_scrape(cadvisor: FakeCadvisorExporter, backend):
    """A pod's counter grows continuously (one core busy); what the backend reads lags the
    truth by no more than one scrape interval (plus the scrape's own latency)."""
    cadvisor.add_pod(NS, "jupyter-dora", **_server_pod("dora", "ocean"))
    stop = threading.Event()
    start = time.monotonic()

    def burn() -> None:
        while not stop.is_set():
            cadvisor.set_cpu(NS, "jupyter-dora", time.monotonic() - start)
            time.sleep(0.05)

    t = threading.Thread(target=burn, daemon=True)
    t.start()
    try:
        cadvisor.wait_scrapes(2)
        for _ in range(4):
            time.sleep(0.7)
            truth = time.monotonic() - start
            got = [r for r in backend.read([], datetime.now(UTC)) if r.resource == CPU]
            assert len(got) == 1 and got[0].source.user == "dora"
            lag = truth - got[0].value
            assert 0 <= lag <= SCRAPE_INTERVAL + 0.5, (truth, got[0].value)
    finally:
        stop.set()
        t.join()


def test_charge_files_name_pods_before_labels(cadvisor: FakeCadvisorExporter, backend):
    """The hub's charge file (its pod) decides the source and project; a pod without any
    label is read when a charge names it."""
    cadvisor.add_pod(NS, "jupyter-erin", {})  # no labels at all
    cadvisor.set_cpu(NS, "jupyter-erin", 5.0)
    cadvisor.add_pod(NS, "jupyter-fred", **_server_pod("fred", "label-project"))
    cadvisor.set_cpu(NS, "jupyter-fred", 6.0)
    cadvisor.wait_scrapes(2)
    erin = Charge(
        "server:erin/#0123456789ab", "erin", "ocean", SERVER, extra={"pod": "jupyter-erin"}
    )
    fred = Charge(
        "server:fred/#ba9876543210",
        "fred",
        "charged-project",
        SERVER,
        extra={"pod": "jupyter-fred", "namespace": NS},
    )
    got = _by(backend.read([_metered(erin), _metered(fred)], datetime.now(UTC)))
    assert got[(erin.source_id, CPU)].value == 5.0
    assert got[(fred.source_id, CPU)].value == 6.0
    assert got[(fred.source_id, CPU)].source.project == "charged-project"
    assert {sid for sid, _ in got} == {erin.source_id, fred.source_id}


def test_a_dask_cluster_is_read_pod_by_pod(cadvisor: FakeCadvisorExporter, backend):
    """Each pod of a cluster is a source of its own (``cluster:<name>/<pod>``): a worker that
    ends does not lower anything the store holds as a counter; workers count as workers."""
    name = "twinhub.0f1e2d3c"
    pods = {
        "dask-scheduler-0f1e2d3c": "dask-scheduler",
        "dask-worker-0f1e2d3c-aaaaa": "dask-worker",
        "dask-worker-0f1e2d3c-bbbbb": "dask-worker",
    }
    for i, (pod, component) in enumerate(pods.items()):
        cadvisor.add_pod(NS, pod, **_dask_pod("gina", "ocean", name, component))
        cadvisor.set_cpu(NS, pod, 1.0 + i)
        cadvisor.set_memory(NS, pod, 0.5 * GIB)
    # The gateway's charge file for the cluster carries the project (labels may be absent).
    charge = Charge(f"cluster:{name}", "gina", "from-charge", CLUSTER, name=name)
    cadvisor.wait_scrapes(2)
    got = _by(backend.read([_metered(charge)], datetime.now(UTC)))
    ids = {f"cluster:{name}/{pod}" for pod in pods}
    assert {sid for sid, _ in got} == ids
    assert sum(r.value for (_, res), r in got.items() if res == CPU) == 6.0
    assert sum(r.value for (_, res), r in got.items() if res == MEMORY) == 1.5
    workers = {sid for (sid, res), r in got.items() if res == DASK_WORKER and r.value == 1.0}
    assert workers == {f"cluster:{name}/{p}" for p, c in pods.items() if c == "dask-worker"}
    assert {
        (r.source.user, r.source.project, r.source.kind, r.source.name) for r in got.values()
    } == {("gina", "from-charge", CLUSTER, name)}

    # Without the charge file (e.g. the gateway's is gone): the pods' annotations name user
    # and project.
    got = _by(backend.read([], datetime.now(UTC)))
    assert {(r.source.user, r.source.project) for r in got.values()} == {("gina", "ocean")}

    # A worker ends: its pod's series go stale; the others read on, unchanged.
    cadvisor.remove_pod(NS, "dask-worker-0f1e2d3c-aaaaa")
    cadvisor.wait_scrapes(2)
    got = _by(backend.read([_metered(charge)], datetime.now(UTC)))
    assert {sid for sid, _ in got} == ids - {f"cluster:{name}/dask-worker-0f1e2d3c-aaaaa"}
    assert got[(f"cluster:{name}/dask-worker-0f1e2d3c-bbbbb", CPU)].value == 3.0


def test_readings_become_records_once_and_a_restart_counts_from_zero(
    cadvisor: FakeCadvisorExporter, backend, tmp_path
):
    """Through A's store on SQLite: counter deltas per pod, a pod restarted under the same
    name (a new uid, its counter from zero again) charged as a new counter, the memory
    gauge over time, a replayed tick charged nothing, and no usage crossing users."""
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    store = UsageStore(url, EnergyModel.from_settings(TwinhubAccounting()), interval=1.0)
    started = datetime.now(UTC) - timedelta(seconds=30)
    hank = Charge(
        "server:hank/#00000000abcd",
        "hank",
        "ocean",
        SERVER,
        started_at=started,
        extra={"pod": "jupyter-hank", "namespace": NS},
    )
    cadvisor.add_pod(NS, "jupyter-hank", {})
    cadvisor.set_cpu(NS, "jupyter-hank", 40.0)
    cadvisor.set_memory(NS, "jupyter-hank", 2 * GIB)
    cadvisor.add_pod(NS, "jupyter-ivy", **_server_pod("ivy", "atmos"))
    cadvisor.set_cpu(NS, "jupyter-ivy", 1.0)

    times: list[datetime] = []

    def tick() -> list[Reading]:
        cadvisor.wait_scrapes(2)
        times.append(datetime.now(UTC))
        readings = backend.read([_metered(hank)], times[-1])
        store.apply(readings)
        return readings

    tick()
    cadvisor.add_cpu(NS, "jupyter-hank", 5.0)
    cadvisor.add_cpu(NS, "jupyter-ivy", 2.5)
    last = tick()
    assert store.apply(last) == 0  # the same tick again (a meter killed before it knew)
    cadvisor.remove_pod(NS, "jupyter-hank")
    cadvisor.add_pod(NS, "jupyter-hank", {})
    cadvisor.set_cpu(NS, "jupyter-hank", 2.0)
    cadvisor.set_memory(NS, "jupyter-hank", 2 * GIB)
    tick()

    with db.session(url) as s:
        rows = list(s.scalars(select(UsageRecord)))
    cpu = {
        u: sum(r.quantity for r in rows if r.user == u and r.resource == CPU)
        for u in ("hank", "ivy")
    }
    assert cpu == {"hank": 47.0, "ivy": 3.5}
    assert {r.method for r in rows} == {"prometheus"}
    assert {(r.user, r.project) for r in rows} == {("hank", "ocean"), ("ivy", "atmos")}
    mem = sum(r.quantity for r in rows if r.user == "hank" and r.resource == MEMORY)
    spans = [min((b - a).total_seconds(), 2.0) for a, b in zip(times, times[1:], strict=False)]
    assert mem == pytest.approx(2.0 * sum(spans))


def test_an_ended_source_gets_counters_only(cadvisor: FakeCadvisorExporter, backend):
    cadvisor.add_pod(NS, "jupyter-jo", {})
    cadvisor.set_cpu(NS, "jupyter-jo", 9.0)
    cadvisor.set_memory(NS, "jupyter-jo", GIB)
    cadvisor.wait_scrapes(2)
    now = datetime.now(UTC)
    charge = Charge(
        "server:jo/#00000000cdef", "jo", "ocean", SERVER, ended_at=now, extra={"pod": "jupyter-jo"}
    )
    got = backend.read([_metered(charge)], now)
    assert [(r.resource, r.value) for r in got] == [(CPU, 9.0)]


def test_prometheus_down_or_oversized_gives_no_readings(
    cadvisor: FakeCadvisorExporter, prometheus_url
):
    from tests.helpers.platform import free_port  # a port nobody listens on

    down = PrometheusBackend(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert down.read([], datetime.now(UTC)) == []
    assert down.last_error and "ConnectError" in down.last_error
    down.close()

    for i in range(3):
        cadvisor.add_pod(NS, f"jupyter-u{i}", **_server_pod(f"u{i}", "ocean"))
    cadvisor.wait_scrapes(2)
    small = PrometheusBackend(prometheus_url, namespace=NS, max_series=2)
    assert small.read([], datetime.now(UTC)) == []
    assert small.last_error and "over 2" in small.last_error
    small.close()
    tiny = PrometheusBackend(prometheus_url, namespace=NS, max_bytes=100)
    assert tiny.read([], datetime.now(UTC)) == []
    assert tiny.last_error and "over 100 bytes" in tiny.last_error
    tiny.close()


def test_the_meter_ticks_through_prometheus(
    cadvisor: FakeCadvisorExporter, prometheus_url, tmp_path
):
    """The meter (B's) with this backend: charge files in, records out; an ended server's
    final read, then its charge file gone."""
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    settings = TwinhubAccounting(
        backend="prometheus", prometheus_url=prometheus_url, prometheus_namespace=NS
    )
    store = UsageStore(url, EnergyModel.from_settings(settings), interval=settings.interval)
    charges = tmp_path / "charges"
    lena = Charge(
        "server:lena/#0000000000aa",
        "lena",
        "ocean",
        SERVER,
        started_at=datetime.now(UTC) - timedelta(seconds=10),
        extra={"pod": "jupyter-lena", "namespace": NS},
    )
    charge_files.write(charges, lena)
    cadvisor.add_pod(NS, "jupyter-lena", {})
    cadvisor.set_cpu(NS, "jupyter-lena", 3.0)
    backend = PrometheusBackend.from_settings(settings)
    meter = Meter(None, settings, store, backends=[backend], directory=charges)
    cadvisor.wait_scrapes(2)
    assert meter.tick() == 1  # the CPU counter; the memory gauge only starts its cursor
    cadvisor.add_cpu(NS, "jupyter-lena", 4.0)
    cadvisor.wait_scrapes(2)
    charge_files.end(charges, lena.source_id)
    meter.tick()
    assert charge_files.list_charges(charges) == []
    with db.session(url) as s:
        rows = list(s.scalars(select(UsageRecord)))
    assert sum(r.quantity for r in rows if r.resource == CPU) == 7.0
    assert {r.user for r in rows} == {"lena"}
    backend.close()


# -- names that are no label values ----------------------------------------------------------
DANA, OCEAN, RUN = "Dana@Example.org", "Ocean Science", "GPU_1"
DANA_SERVER, DANA_WORKER = "jupyter-dana-example-org---8adfdf65--gpu-1", "dask-worker-5e6f-aaaaa"


def _dana(cadvisor: FakeCadvisorExporter) -> None:
    """A named server and a Dask worker (no charge files) of a user and a project whose names
    are no label values."""
    cadvisor.add_pod(NS, DANA_SERVER, **_server_pod(DANA, OCEAN, RUN))
    cadvisor.add_pod(NS, DANA_WORKER, **_dask_pod(DANA, OCEAN, "twinhub.5e6f", "dask-worker"))
    cadvisor.set_cpu(NS, DANA_SERVER, 8.0)
    cadvisor.set_cpu(NS, DANA_WORKER, 2.0)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == backend_prometheus.__name__ and r.levelno == logging.WARNING
    ]


def test_names_that_are_no_label_values_are_charged_under_the_names(
    cadvisor: FakeCadvisorExporter, backend, tmp_path, caplog
):
    """The labels hold slugs ("Ocean Science" -> ``ocean-science---884a542d``); the pods'
    annotations hold the names, and the records carry the names."""
    assert (_slug(DANA), _slug(OCEAN), _slug(RUN)) != (DANA, OCEAN, RUN)  # the premise
    caplog.set_level(logging.WARNING, logger=backend_prometheus.__name__)
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    store = UsageStore(url, EnergyModel.from_settings(TwinhubAccounting()), interval=1.0)
    _dana(cadvisor)
    cadvisor.wait_scrapes(2)
    readings = backend.read([], datetime.now(UTC))
    store.apply(readings)
    got = {r.source.kind: r.source for r in readings if r.resource == CPU}
    assert (got[NAMED_SERVER].user, got[NAMED_SERVER].project) == (DANA, OCEAN)
    assert got[NAMED_SERVER].name == RUN
    assert got[NAMED_SERVER].source_id.startswith(f"server:{DANA}/{RUN}#")
    assert (got[CLUSTER].user, got[CLUSTER].project, got[CLUSTER].name) == (
        DANA,
        OCEAN,
        "twinhub.5e6f",
    )
    cadvisor.add_cpu(NS, DANA_SERVER, 1.5)
    cadvisor.wait_scrapes(2)
    store.apply(backend.read([], datetime.now(UTC)))

    with db.session(url) as s:
        rows = list(s.scalars(select(UsageRecord)))
    assert {(r.user, r.project) for r in rows} == {(DANA, OCEAN)}
    assert sum(r.quantity for r in rows if r.resource == CPU) == 11.5
    assert _warnings(caplog) == []


def test_without_the_annotation_series_the_slugs_are_charged_and_logged_once_per_pod(
    cadvisor: FakeCadvisorExporter, backend, caplog
):
    """kube-state-metrics without ``--metric-annotations-allowlist``: no
    ``kube_pod_annotations``; the label slugs are charged (as before annotations were read)
    and the log says, once per pod, which annotations the allowlist lacks."""
    caplog.set_level(logging.WARNING, logger=backend_prometheus.__name__)
    cadvisor.annotations_allowlist = ()
    _dana(cadvisor)
    cadvisor.wait_scrapes(2)
    got = {r.source.kind: r.source for r in backend.read([], datetime.now(UTC))}
    assert {(s.user, s.project) for s in got.values()} == {(_slug(DANA), _slug(OCEAN))}
    assert got[NAMED_SERVER].name == _slug(RUN)
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings
    for pod, missing in (
        (
            DANA_SERVER,
            "annotation_twinhub_io_user, annotation_twinhub_io_project, "
            "annotation_hub_jupyter_org_servername",
        ),
        (DANA_WORKER, "annotation_twinhub_io_user, annotation_twinhub_io_project"),
    ):
        (line,) = [w for w in warnings if f"{NS}/{pod} " in w]
        assert f"has no {missing} for it" in line
        assert "--metric-annotations-allowlist" in line

    # Once per pod: the next tick charges the same and logs nothing.
    caplog.clear()
    again = {r.source.kind: r.source for r in backend.read([], datetime.now(UTC))}
    assert again[NAMED_SERVER].user == _slug(DANA)
    assert _warnings(caplog) == []

    # An allowlist without the project: the user's name, the project's slug, and new pods
    # (new uids, as after a restart) are logged again, naming only what is missing.
    cadvisor.annotations_allowlist = ("twinhub.io/user", "hub.jupyter.org/servername")
    _dana(cadvisor)
    cadvisor.wait_scrapes(2)
    got = {r.source.kind: r.source for r in backend.read([], datetime.now(UTC))}
    assert {(s.user, s.project) for s in got.values()} == {(DANA, _slug(OCEAN))}
    assert got[NAMED_SERVER].name == RUN
    warnings = _warnings(caplog)
    assert len(warnings) == 2 and all(
        "has no annotation_twinhub_io_project for it" in w for w in warnings
    ), warnings
