"""The gateway's ``job`` cluster option (twinhub.gateway.backend.ClusterLimitMixin): a job
cluster does not count against ``max_clusters_per_user``, and is allowed only for a running
processing job of its user, one cluster per job. Real database (SQLite and PostgreSQL); the
Kubernetes backend runs its real ``start_cluster`` against a fake of the custom objects API
(no Kubernetes here)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.kubernetes.utils import Informer
from dask_gateway_server.models import User
from dask_gateway_server.utils import Flag
from dask_gateway_server.workqueue import WorkQueue
from traitlets.config import Config

from twinhub import db
from twinhub.db.models import ProcessingJob
from twinhub.gateway import TwinhubGateway, kube, server_config
from twinhub.gateway.backend import ClusterLimitMixin, job_of
from twinhub.process.runtime import Runtime

OLGA = User("olga", groups=["climate"])


def add_job(url: str, jid: str, owner: str, status: str) -> None:
    with db.session(url) as s:
        s.add(
            ProcessingJob(
                id=jid, owner=owner, project="climate", process_id="echo", inputs={},
                status=status, stage="processing", wall_time=60.0, max_output_bytes=2048,
            )
        )  # fmt: skip


@pytest.fixture
def jobs_db(twinhub_db: str) -> str:
    add_job(twinhub_db, "j-run", "olga", "running")
    add_job(twinhub_db, "j-run2", "olga", "running")
    add_job(twinhub_db, "j-queued", "olga", "accepted")
    add_job(twinhub_db, "j-done", "olga", "successful")
    add_job(twinhub_db, "j-piet", "piet", "running")
    yield twinhub_db
    db.dispose_engines()


def cluster(job: str = "") -> SimpleNamespace:
    """An active cluster as the backends' databases hold it (its parsed options)."""
    return SimpleNamespace(options={"project": "climate", "job": job})


def check(mixin: ClusterLimitMixin, request: dict, active: list) -> None:
    asyncio.run(mixin.check_new_cluster("olga", request, active))


def test_the_options_carry_a_job_string() -> None:
    opts = server_config.cluster_options(TwinhubGateway(worker_cores_max=2), None, ["climate"])
    assert opts.parse_options({})["job"] == ""
    assert opts.parse_options({"job": "j-run"})["job"] == "j-run"
    with pytest.raises(TypeError, match="job must be a string"):
        opts.parse_options({"job": 3})
    parsed = opts.parse_options({"job": "j-run"})
    assert job_of(SimpleNamespace(options=parsed)) == "j-run"
    assert job_of(SimpleNamespace(options=None)) == "" and job_of(cluster(job=7)) == ""  # type: ignore[arg-type]


def test_job_clusters_do_not_count_and_need_a_running_job_of_the_user(jobs_db) -> None:
    mixin = ClusterLimitMixin(max_clusters_per_user=1, jobs_db_url=jobs_db)
    # At the limit of interactive clusters: another is refused, a job's is not.
    with pytest.raises(PublicException, match="already has 1 active cluster"):
        check(mixin, {}, [cluster()])
    check(mixin, {"job": "j-run"}, [cluster()])
    # Job clusters leave room for an interactive one, and a second job gets its own.
    check(mixin, {}, [cluster("j-run")])
    check(mixin, {"job": "j-run2"}, [cluster(), cluster("j-run")])
    # One cluster per job.
    with pytest.raises(PublicException, match="job j-run already has an active cluster"):
        check(mixin, {"job": "j-run"}, [cluster("j-run")])
    # Not running, not there, someone else's: the same refusal, naming the job and user.
    for job in ("j-queued", "j-done", "no-such-job", "j-piet"):
        with pytest.raises(PublicException, match=f"^job {job} is not a running job of olga$"):
            check(mixin, {"job": job}, [])


def test_clusters_of_ended_jobs_count_against_the_limit(jobs_db) -> None:
    """A job cluster still up once its job has ended (or of a job that is not the user's
    running one) counts like an interactive cluster: runners cannot pile clusters up."""
    mixin = ClusterLimitMixin(max_clusters_per_user=2, jobs_db_url=jobs_db)
    count = lambda jobs: asyncio.run(mixin.counted_clusters("olga", jobs))  # noqa: E731
    assert count([]) == 0 and count(["", ""]) == 2
    assert count(["j-run", "j-run2"]) == 0  # running: not counted
    assert count(["j-done", "j-queued", "j-piet", "no-such-job", "j-run", ""]) == 5
    # Two ended jobs' clusters fill the limit: no interactive cluster, no third ended one.
    with pytest.raises(PublicException, match="already has 2 active cluster"):
        check(mixin, {}, [cluster("j-done"), cluster("j-piet")])
    check(mixin, {}, [cluster("j-done"), cluster("j-run"), cluster("j-run2")])
    # A running job still gets its cluster whatever the count (the job admission limits it).
    check(mixin, {"job": "j-run"}, [cluster("j-done"), cluster("j-piet"), cluster()])
    # The database unreadable: every job cluster counts (and new ones are refused).
    gone = ClusterLimitMixin(max_clusters_per_user=2, jobs_db_url="sqlite:////no/such/dir/x.db")
    assert asyncio.run(gone.counted_clusters("olga", ["j-run", ""])) == 2
    assert asyncio.run(ClusterLimitMixin().counted_clusters("olga", ["j-run"])) == 1


def test_without_the_jobs_database_every_job_cluster_is_refused(tmp_path) -> None:
    with pytest.raises(PublicException, match="job j-run is not a running job of olga"):
        check(ClusterLimitMixin(), {"job": "j-run"}, [])
    gone = ClusterLimitMixin(jobs_db_url=f"sqlite:///{tmp_path}/no/such/dir/twinhub.sqlite")
    with pytest.raises(PublicException, match="cannot be checked now"):
        check(gone, {"job": "j-run"}, [])
    db.dispose_engines()


def test_the_embedded_gateway_config_reads_the_jobs_database(tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ports = {"dask-gateway": 1, "hub": 2, "public": 3}
    rt = Runtime(state_dir=state, mode="multi-user", instance_id="tgw", ports=ports)
    rt.save()
    c = Config()
    server_config.configure_gateway(c, state)
    assert c.TwinhubBackendMixin.jobs_db_url == rt.db_url
    rt.config.TwinhubProcessing.enabled = False
    rt.save()
    c = Config()
    server_config.configure_gateway(c, state)
    assert "jobs_db_url" not in c.TwinhubBackendMixin


class FakeCustomObjects:
    """A fake of the Kubernetes custom objects API (absent here): keeps what is created."""

    def __init__(self) -> None:
        self.created: list[dict] = []

    async def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        body["metadata"].update(namespace=namespace, creationTimestamp="2026-12-05T07:00:00Z")
        self.created.append(body)
        return body


def kube_backend(jobs_db: str) -> tuple[kube.TwinhubKubeBackend, FakeCustomObjects]:
    c = Config()
    c.KubeBackend.gateway_instance = "twinhub-dask-gateway"
    c.TwinhubKubeBackend.max_clusters_per_user = 1
    c.TwinhubKubeBackend.jobs_db_url = jobs_db
    c.TwinhubKubeBackend.cluster_options = server_config.cluster_options(
        TwinhubGateway(worker_cores_max=2)
    )
    b = kube.TwinhubKubeBackend(config=c)
    # What KubeBackend.setup makes, without an API client (as tests/unit/hub/test_gateway_kube).
    b.clusters, b.username_to_clusters = {}, defaultdict(dict)
    b.cluster_waiters = defaultdict(Flag)
    b.queue = WorkQueue()
    b.informer = Informer(
        parent=b, name="cluster", on_update=b.on_cluster_event, on_delete=b.on_cluster_event
    )
    b.informer.cache = {}
    b.custom_client = FakeCustomObjects()
    return b, b.custom_client


async def deliver(b: kube.TwinhubKubeBackend, obj: dict, event: str) -> None:
    b.informer.handle(obj, event)
    while not b.queue.is_empty():
        name = await b.queue.get()
        await b.sync_cluster(name)
        b.queue.task_done(name)


def test_kube_backend_counts_job_clusters_apart(jobs_db) -> None:
    async def main() -> None:
        b, api = kube_backend(jobs_db)  # in the loop: its work queue takes the running one
        await b.start_cluster(OLGA, {})
        with pytest.raises(PublicException, match="already has 1 active cluster"):
            await b.start_cluster(OLGA, {})
        job_cluster = await b.start_cluster(OLGA, {"job": "j-run"})
        assert await b.active_cluster_count("olga") == 1
        assert (await b.active_clusters("olga"))[job_cluster] == "j-run"
        # Not yet seen by the informer, then seen: a second cluster of that job is refused.
        with pytest.raises(PublicException, match="j-run already has an active cluster"):
            await b.start_cluster(OLGA, {"job": "j-run"})
        await deliver(b, api.created[1], "ADDED")
        assert job_cluster in b.clusters and job_cluster not in b._created_jobs
        with pytest.raises(PublicException, match="j-run already has an active cluster"):
            await b.start_cluster(OLGA, {"job": "j-run"})
        with pytest.raises(PublicException, match="j-piet is not a running job of olga"):
            await b.start_cluster(OLGA, {"job": "j-piet"})
        # Gone: the job may have a cluster again (a resumed attempt).
        await deliver(b, api.created[1], "DELETED")
        third = await b.start_cluster(OLGA, {"job": "j-run"})
        assert len(api.created) == 3
        # Its job ends while the cluster is up: the cluster now counts (with the interactive
        # one: 2 > 1), and nothing interactive may start until one is shut down.
        with db.session(jobs_db) as s:
            s.get(ProcessingJob, "j-run").status = "successful"
        assert (await b.active_clusters("olga"))[third] == "j-run"
        assert await b.active_cluster_count("olga") == 2
        with pytest.raises(PublicException, match="already has 2 active cluster"):
            await b.start_cluster(OLGA, {})
        b.queue.close()

    asyncio.run(main())
