"""How the gateway plugs into the platform: hub config, component, generated server config.

Fast (no processes): the real ``configure_hub`` on a real traitlets ``Config``, and the real
``dask-gateway-server`` application initialised from the file ``prepare`` writes.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from dask_gateway import GatewayCluster
from dask_gateway.auth import JupyterHubAuth, get_auth
from traitlets.config import Config

from twinhub.gateway import ACCESS_SCOPE, GatewayPart
from twinhub.gateway.backend import HOLD_PRELOAD_FILE
from twinhub.process.runtime import Runtime, world_reachable


@pytest.fixture
def rt(tmp_path):
    r = Runtime(
        state_dir=tmp_path / "state",
        ports={"public": 18500, "hub": 18501, "dask-gateway": 18502},
        mode="personal",
        instance_id="cfgtest",
    )
    r.state_dir.mkdir(mode=0o700)
    r.save()
    return r


def test_configure_hub_registers_service_and_user_env(rt, monkeypatch):
    c = Config()
    # What other modules may already have set (spawner, auth): kept, merged.
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", "read:users"]
    c.Spawner.environment = {"TWINHUB_PROFILE": "small-cpu"}
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "read:groups"]}]
    GatewayPart().configure_hub(c, rt)

    (svc,) = [s for s in c.JupyterHub.services if s["name"] == "dask-gateway"]
    assert svc["url"] == "http://127.0.0.1:18502"
    assert svc["api_token"] == (rt.secrets_dir / "service-dask-gateway").read_text().strip()
    assert stat.S_IMODE((rt.secrets_dir / "service-dask-gateway").stat().st_mode) == 0o600
    assert set(c.Spawner.server_token_scopes) == {
        "users:activity!user", "access:servers!server", "read:users", ACCESS_SCOPE,
    }  # fmt: skip
    (user_role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "user"]
    assert user_role["scopes"] == ["self", "read:groups", ACCESS_SCOPE]
    env = c.Spawner.environment
    assert env["TWINHUB_PROFILE"] == "small-cpu"
    assert env["DASK_GATEWAY__ADDRESS"] == "http://127.0.0.1:18502/services/dask-gateway"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://127.0.0.1:18502"
    assert env["DASK_GATEWAY__PUBLIC_ADDRESS"] == "http://127.0.0.1:18500/services/dask-gateway"
    # JupyterHub auth, through the class whose module fixes dask-gateway's client.
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "a-server-token")  # as in a user's server
    auth = get_auth(env["DASK_GATEWAY__AUTH__TYPE"])
    assert isinstance(auth, JupyterHubAuth) and GatewayCluster._twinhub_fixed
    # The Dask sidebar makes gateway clusters.
    assert (env["DASK_LABEXTENSION__FACTORY__MODULE"], env["DASK_LABEXTENSION__FACTORY__CLASS"]) == (
        "dask_gateway", "GatewayCluster",
    )  # fmt: skip
    assert callable(c.Spawner.post_stop_hook)


def test_configure_hub_defaults_and_callable_scopes(rt):
    c = Config()
    GatewayPart().configure_hub(c, rt)
    assert set(c.Spawner.server_token_scopes) == {
        "users:activity!user", "access:servers!server", ACCESS_SCOPE,
    }  # fmt: skip
    assert c.JupyterHub.load_roles == [{"name": "user", "scopes": ["self", ACCESS_SCOPE]}]
    c2 = Config()
    c2.Spawner.server_token_scopes = lambda spawner: ["read:users!user=" + spawner]
    GatewayPart().configure_hub(c2, rt)
    assert c2.Spawner.server_token_scopes("ann") == sorted(["read:users!user=ann", ACCESS_SCOPE])


def test_component_keeps_secrets_off_the_command_line(rt):
    GatewayPart().prepare(rt, print)
    (comp,) = GatewayPart().components(rt)
    token = rt.secret("service-dask-gateway")
    assert comp.name == "dask-gateway" and comp.port == 18502
    assert not any(token in a for a in comp.argv) and token not in str(comp.env)
    assert comp.env["TWINHUB_INSTANCE"] == "cfgtest"
    f = rt.path("run", "dask_gateway_config.py")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and token not in f.read_text()
    assert comp.ready() is False  # nothing listens on 18502


def test_generated_config_loads_in_dask_gateway_server(rt):
    from dask_gateway_server.app import DaskGateway

    GatewayPart().prepare(rt, print)
    app = DaskGateway()
    app.initialize(["-f", str(rt.path("run", "dask_gateway_config.py"))])
    try:
        assert type(app.backend).__name__ == "TwinhubPersonalBackend"
        assert type(app.authenticator).__name__ == "TwinhubHubAuthenticator"
        auth = app.authenticator
        assert auth.jupyterhub_api_url == "http://127.0.0.1:18501/hub/api"
        assert auth.jupyterhub_api_token == rt.secret("service-dask-gateway")
        assert auth.use_service_access_scopes  # tokens need access:services!service=dask-gateway
        spec = app.backend.cluster_options.get_specification()
        # job: set by the processing service only (a running job's cluster), empty otherwise
        assert {f["field"] for f in spec} == {"worker_cores", "worker_memory", "job"}
        # Schedulers load the lease preload, and learn the grace time from the environment.
        assert app.backend.hold_grace == 10.0
        assert HOLD_PRELOAD_FILE.endswith("/kernel_hold.py") and Path(HOLD_PRELOAD_FILE).is_file()
    finally:
        DaskGateway.clear_instance()


def test_orphan_grace_reaches_the_backend(rt):
    from dask_gateway_server.app import DaskGateway

    rt.config.merge(Config({"TwinhubGateway": {"orphan_grace": 3.5}}))
    rt.save()  # the gateway process loads the runtime from disk
    GatewayPart().prepare(rt, print)
    app = DaskGateway()
    app.initialize(["-f", str(rt.path("run", "dask_gateway_config.py"))])
    try:
        assert app.backend.hold_grace == 3.5
    finally:
        DaskGateway.clear_instance()


def test_bad_limits_are_refused_by_name(rt):
    rt.config.merge(Config({"TwinhubGateway": {"worker_cores": 64, "worker_cores_max": 2}}))
    with pytest.raises(ValueError, match="TwinhubGateway.worker_cores"):
        GatewayPart().prepare(rt, print)
    rt.config = Config({"TwinhubGateway": {"worker_memory": 16.0, "worker_memory_max": 8.0}})
    with pytest.raises(ValueError, match="worker_memory"):
        GatewayPart().configure_hub(Config(), rt)
    rt.config = Config()
    del rt.ports["dask-gateway"]
    with pytest.raises(RuntimeError, match="no port allocated for 'dask-gateway'"):
        GatewayPart().components(rt)


def test_multiuser_cluster_dir_must_be_reachable_by_accounts(rt):
    if os.geteuid() != 0:
        pytest.skip("multi-user mode: the gateway runs as root")
    rt.mode = "multi-user"
    base = Path(tempfile.mkdtemp(prefix="twinhub-gwcfg-", dir="/tmp"))  # /tmp: o+x
    try:
        base.chmod(0o700)
        rt.config.merge(Config({"Twinhub": {"shared_dir": str(base / "shared")}}))
        with pytest.raises(RuntimeError, match="not reachable by users' OS accounts"):
            GatewayPart().prepare(rt, print)
        base.chmod(0o755)
        assert world_reachable(base)
        GatewayPart().prepare(rt, print)
        d = base / "shared" / "dask-clusters"
        assert stat.S_IMODE(d.stat().st_mode) == 0o711 and d.stat().st_uid == 0
    finally:
        shutil.rmtree(base)
