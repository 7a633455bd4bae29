"""twinlab.contract (the hub <-> lab agreement) and twinlab.environment (twinlab's one
reader of the environment): importable without twinlab's heavy parts, and the shared
bbox/datetime rules."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from twinlab import contract, environment


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["twinlab.contract", "twinlab.environment"])
def test_importing_loads_only_the_standard_library(module):
    added = _modules_after(f"import {module}") - _modules_after("pass")
    ours = {m for m in added if m.split(".")[0] == "twinlab"}
    assert ours <= {"twinlab", "twinlab.contract", "twinlab.environment"}, ours
    foreign = {m for m in added - ours if m.split(".")[0] not in sys.stdlib_module_names}
    assert not foreign, foreign


def test_bbox_rule_messages_are_the_hubs_and_twinlabs():
    assert contract.check_bbox("0,40,10,50") == [0.0, 40.0, 10.0, 50.0]
    # A GET query's exact form: an empty part is a fifth value, not skipped.
    with pytest.raises(ValueError, match="4 or 6 numbers, got 5"):
        contract.check_bbox("0,40,10,50,")
    for value, words in (
        ("1,2,3", "4 or 6 numbers, got 3"),
        (42, "4 or 6 numbers, got int"),
        ({"a": 1}, "4 or 6 numbers, got dict"),
        ("a,b,c,d", "numbers"),
        ("0,0,181,1", "east longitude 181.0 outside [-180, 180]"),
        ("0,-91,1,1", "south latitude -91.0 outside [-90, 90]"),
        ("0,10,1,5", "south 10.0 is north of north 5.0"),
        ("0,nan,1,1", "finite"),
        ("0,0,5,1,1,2", "lowest elevation 5.0 above highest 2.0"),
    ):
        with pytest.raises(ValueError, match=words.replace("[", r"\[")):
            contract.check_bbox(value)


def test_datetime_rule_accepts_dates_pairs_and_open_ends():
    day = dt.date(2020, 1, 1)
    for ok in ("2020", "2020-01-01T00:00:00Z/..", day, (day, None), ["2020-01-01", None]):
        assert contract.check_datetime(ok) == ok
    with pytest.raises(ValueError, match="start is after end"):
        contract.check_datetime("2021/2020")
    with pytest.raises(ValueError, match="a \\(start, end\\) pair"):
        contract.check_datetime(3)


def test_environment_reads_typed_values(monkeypatch):
    monkeypatch.setenv(contract.ENV_STORAGE, '{"home_bucket": "home-x"}')
    monkeypatch.setenv(contract.ENV_SERVICES, '{"stac": "http://h/services/stac/"}')
    monkeypatch.setenv(contract.ENV_LIMITS_ENFORCED, "1")
    monkeypatch.setenv(contract.ENV_MEM_LIMIT, "2e9")
    monkeypatch.setenv(environment.ENV_UPLOAD_MAX_BYTES, "many")
    assert environment.storage() == {"home_bucket": "home-x"}
    assert environment.services() == {"stac": "http://h/services/stac/"}
    assert environment.limits_enforced() and environment.mem_limit() == 2e9
    assert environment.integer(environment.ENV_UPLOAD_MAX_BYTES, 7) == 7  # not a number
    monkeypatch.setenv(contract.ENV_STORAGE, "[1]")
    with pytest.raises(environment.SettingError, match="must be a JSON object"):
        environment.storage()
    monkeypatch.setenv(contract.ENV_SERVICES, "{oops")
    assert environment.services() == {}
