"""Profiles (validation, choice, form, GPU offer, KubeSpawner profile_list) and limit parsing."""

from __future__ import annotations

import asyncio
import copy

import pytest

from tests.helpers.fake_kube import use_fake_kube_config
from twinhub.config import DEFAULT_PROFILES
from twinhub.gateway import GatewayPart
from twinhub.spawn import profiles
from twinhub.spawn.profiles import ProfileError

P = profiles.validate_profiles(DEFAULT_PROFILES)


def test_default_profiles_validate_and_normalise() -> None:
    assert [p["slug"] for p in P] == ["small-cpu", "large-cpu", "gpu"]
    assert profiles.default_profile(P)["slug"] == "small-cpu"
    assert P[2]["gpu"] is True and P[0]["gpu"] is False
    minimal = profiles.validate_profiles([{"slug": "x"}])[0]
    assert minimal == {"slug": "x", "display_name": "x", "description": "", "default": False,
                       "gpu": False, "env": {}, "limits": {}}  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ([], "empty"),
        ([{"display_name": "no slug"}], "slug None"),
        ([{"slug": "Big CPU"}], "slug 'Big CPU'"),
        ([{"slug": "a"}, {"slug": "a"}], "'a' is defined twice"),
        ([{"slug": "a", "default": True}, {"slug": "b", "default": True}], "more than one default"),
        ([{"slug": "a", "image": "x"}], "unknown key"),
        ([{"slug": "a", "env": {"N": 1}}], "env must map names to strings"),
        ([{"slug": "a", "limits": {"memory": "lots"}}], "memory limit 'lots'"),
        ([{"slug": "a", "limits": {"cpu": -1}}], "must be positive"),
        ([{"slug": "a", "limits": {"disk": "1G"}}], "unknown limit"),
        (["small"], "must be a dict"),
    ],
)
def test_invalid_profile_lists_name_the_problem(bad: list, problem: str) -> None:
    with pytest.raises(ProfileError, match=problem):
        profiles.validate_profiles(bad)


def test_choose() -> None:
    assert profiles.choose(P, {})["slug"] == "small-cpu"
    assert profiles.choose(P, None)["slug"] == "small-cpu"
    assert profiles.choose(P, {"profile": "large-cpu"})["slug"] == "large-cpu"
    with pytest.raises(
        ProfileError, match=r"unknown profile 'huge'; available: small-cpu, large-cpu, gpu"
    ):
        profiles.choose(P, {"profile": "huge"})
    with pytest.raises(ProfileError, match=r"unknown server option\(s\) \['image'\]"):
        profiles.choose(P, {"profile": "gpu", "image": "x"})
    with pytest.raises(ProfileError, match="must be a string"):
        profiles.choose(P, {"profile": 3})
    with pytest.raises(ProfileError, match="no server profile is available"):
        profiles.choose([], {})


def test_gpu_profiles_offered_only_with_a_gpu() -> None:
    offered = [p["slug"] for p in profiles.offered_profiles(P, detect_gpu=True)]
    has_gpu = profiles.gpu_present()
    assert offered == (["small-cpu", "large-cpu", "gpu"] if has_gpu else ["small-cpu", "large-cpu"])
    # Detection switched off: everything is offered.
    assert len(profiles.offered_profiles(P, detect_gpu=False)) == 3


def test_options_form_and_form_data() -> None:
    form = profiles.options_form(P)
    assert 'value="small-cpu" checked' in form and 'value="large-cpu"' in form
    assert "memory 2 GiB, 1 CPU" in form
    # Nothing to choose: still a form (JupyterHub spawns unasked on GET /hub/spawn without
    # one), naming the profile that the click on Start will send.
    one = profiles.options_form(P[:1])
    assert '<input type="hidden" name="profile" value="small-cpu">' in one
    assert 'type="radio"' not in one and "memory 2 GiB, 1 CPU" in one
    assert "No server profile is available to you" in profiles.options_form([])
    evil = profiles.validate_profiles([{"slug": "a", "display_name": "<b>x</b>"}, {"slug": "b"}])
    assert "<b>x</b>" not in profiles.options_form(evil)
    assert profiles.options_from_form({"profile": ["large-cpu"]}) == {"profile": "large-cpu"}
    assert profiles.options_from_form({}) == {}


def test_kubespawner_profile_list_is_valid_for_kubespawner(tmp_path, monkeypatch) -> None:
    from kubespawner import KubeSpawner

    use_fake_kube_config(tmp_path, monkeypatch)

    source = copy.deepcopy(DEFAULT_PROFILES)
    source[1]["kubespawner_override"] = {"image": "twinhub/lab:gpu", "cpu_limit": 1.5}
    plist = profiles.kubespawner_profile_list(source)
    assert [p["slug"] for p in plist] == ["small-cpu", "large-cpu", "gpu"]
    assert plist[0]["default"] is True and "default" not in plist[1]

    async def load(slug: str) -> KubeSpawner:
        sp = KubeSpawner(_mock=True, profile_list=plist)
        sp.user_options = {"profile": slug}
        await sp.load_user_options()
        return sp

    small = asyncio.run(load("small-cpu"))
    assert small.cpu_limit == 1.0 and small.mem_limit == 2 * 2**30
    assert small.environment["TWINHUB_PROFILE"] == "small-cpu"
    assert small.environment["OMP_NUM_THREADS"] == "1"
    large = asyncio.run(load("large-cpu"))
    assert large.image == "twinhub/lab:gpu" and large.cpu_limit == 1.5  # override wins
    gpu = asyncio.run(load("gpu"))
    assert gpu.extra_resource_limits == {"nvidia.com/gpu": "1"}
    # The same unknown-profile refusal as the local spawner.
    with pytest.raises(ValueError, match="huge"):
        asyncio.run(load("huge"))


def test_profile_filter_hook_per_user() -> None:
    """The hook the project filter plugs into: sync or async, used by form and choice."""
    from types import SimpleNamespace

    from tornado import web

    from twinhub.spawn.modes import PersonalSpawner
    from twinhub.spawn.spawner import _apply_profile

    def only_small_for_guests(user, offered):
        return [p for p in offered if user.name != "guest" or p["slug"] == "small-cpu"]

    async def async_filter(user, offered):
        return only_small_for_guests(user, offered)

    for hook in (only_small_for_guests, async_filter):
        guest = PersonalSpawner(profiles=P, detect_gpu=False, profile_filter=hook)
        guest.user = SimpleNamespace(name="guest")
        assert [p["slug"] for p in asyncio.run(guest.profiles_for_user())] == ["small-cpu"]
        other = SimpleNamespace(name="ada")
        assert len(asyncio.run(guest.profiles_for_user(other))) == 3
        # One profile left: a form naming it (never empty, see options_form).
        form = asyncio.run(guest.get_options_form())
        assert 'name="profile" value="small-cpu"' in form and 'type="radio"' not in form
        with pytest.raises(web.HTTPError) as e:
            asyncio.run(_apply_profile(guest, {"profile": "large-cpu"}))
        assert e.value.status_code == 400
        assert "'large-cpu' cannot be started: it is not available to you" in str(e.value)
        asyncio.run(_apply_profile(guest, {}))
        assert guest.profile["slug"] == "small-cpu"
        assert guest.mem_limit == 2 * 2**30 and guest.cpu_limit == 1.0


def test_the_gateway_part_lists_itself_in_the_servers_services(tmp_path) -> None:
    from traitlets.config import Config

    from twinhub.process.runtime import Runtime
    from twinhub.spawn.modes import MultiUserSpawner

    c = Config()
    ports = {"public": 8123, "dask-gateway": 8124}
    GatewayPart().configure_hub(c, Runtime(tmp_path, Config(), ports=ports, mode="multi-user"))
    c.TwinhubSpawner.services.update({"registry": "http://reg/"})  # a later part's
    assert MultiUserSpawner(config=c).services == {
        "dask-gateway": "http://127.0.0.1:8123/services/dask-gateway/",
        "registry": "http://reg/",
    }
    off = Config({"TwinhubGateway": {"enabled": False}})
    c = Config()
    GatewayPart().configure_hub(c, Runtime(tmp_path, off, ports=ports, mode="multi-user"))
    assert MultiUserSpawner(config=c).services == {}  # no gateway, none listed


def test_configure_hub_applies_mode_profiles_and_merges_environment(tmp_path) -> None:
    from traitlets.config import Config

    from twinhub.process.runtime import Runtime
    from twinhub.spawn.modes import MultiUserSpawner, PersonalSpawner, SpawnPart

    c = Config()
    c.Spawner.environment.update({"DASK_GATEWAY__ADDRESS": "http://gw"})  # another module's
    conf = Config(
        {
            "Twinhub": {"profiles": DEFAULT_PROFILES[:2], "user_prefix": "u-"},
            "TwinhubSpawnerConfig": {"enforce_limits": "off"},  # no cgroup side effects here
        }
    )
    rt = Runtime(tmp_path, conf, ports={"public": 8123}, mode="multi-user", instance_id="i1")
    SpawnPart().configure_hub(c, rt)
    c.TwinhubSpawner.services.update({"registry": "http://reg/"})  # a later module's
    assert c.JupyterHub.spawner_class is MultiUserSpawner
    sp = MultiUserSpawner(config=c)
    assert sp.cmd == [rt.bin("jupyterhub-singleuser")]
    assert sp.environment == {"DASK_GATEWAY__ADDRESS": "http://gw"}
    assert sp.services == {"registry": "http://reg/"}  # the gateway part lists its own
    assert [p["slug"] for p in sp.profiles] == ["small-cpu", "large-cpu"]
    assert (sp.user_prefix, sp.state_dir, sp.instance_id) == ("u-", str(tmp_path), "i1")
    assert "post_stop_hook" not in c.Spawner  # owned by the gateway module

    off = Config({"TwinhubSpawnerConfig": {"enforce_limits": "off"}})
    SpawnPart().configure_hub(c, Runtime(tmp_path, off, mode="personal"))
    assert c.JupyterHub.spawner_class is PersonalSpawner

    bad = Config({"Twinhub": {"user_prefix": "Twin_"}})
    with pytest.raises(ValueError, match="user_prefix 'Twin_' is not valid"):
        SpawnPart().configure_hub(Config(), Runtime(tmp_path, bad, mode="multi-user"))
    broken = Config({"Twinhub": {"profiles": [{"slug": "a", "limits": {"memory": "x"}}]}})
    with pytest.raises(ProfileError, match="memory limit 'x'"):
        SpawnPart().configure_hub(Config(), Runtime(tmp_path, broken, mode="personal"))
