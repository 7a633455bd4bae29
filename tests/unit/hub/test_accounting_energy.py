"""services.accounting.energy: the model, CO2e series, and RAPL apportioning read from a fake
powercap tree and a fake /proc/stat (files in tmp, shaped like the kernel's; this machine
has no RAPL)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import (
    EnergyModel,
    RaplSampler,
    cpu_model_name,
    read_carbon_series,
    watts_per_core,
)


def model(**kw) -> EnergyModel:
    args = dict(
        cpu_watts=3.5, memory_watts_per_gib=0.392, gpu_watts=None, pue=1.5, carbon_intensity=300.0
    )
    return EnergyModel(**(args | kw))


def test_model_energy_per_resource():
    m = model()
    e = m.for_record("cpu", 3600.0)
    assert (e.joules, e.method) == (pytest.approx(3600 * 3.5 * 1.5), "model")
    assert m.for_record("memory", 3600.0).joules == pytest.approx(3600 * 0.392 * 1.5)
    assert m.for_record("cpu", 10.0, rapl_j_per_core_s=8.0).joules == pytest.approx(120.0)
    assert m.for_record("cpu", 10.0, rapl_j_per_core_s=8.0).method == "rapl"
    # GPU: measured NVML joules, else an operator's watts, else nothing (never a guess).
    assert m.for_record("gpu", 60.0, measured_j=1000.0).joules == pytest.approx(1500.0)
    assert m.for_record("gpu", 60.0).method == "none"
    assert m.for_record("gpu", 60.0).joules is None
    assert model(gpu_watts=300.0).for_record("gpu", 60.0).joules == pytest.approx(27000.0)
    assert m.for_record("dask_worker", 60.0).method == "none"
    # 1 kWh at 300 g/kWh.
    assert m.co2e_g(3.6e6, datetime(2026, 1, 1, tzinfo=UTC)) == pytest.approx(300.0)
    assert m.co2e_g(None, datetime(2026, 1, 1, tzinfo=UTC)) is None


def test_watts_per_core_table_first_match_wins():
    table = {r"EPYC 7\d\d3": 4.0, r"Xeon.*Gold": 5.0, r"Xeon": 6.0}
    assert watts_per_core("AMD EPYC 7763 64-Core Processor", table, 3.5) == 4.0
    assert watts_per_core("Intel(R) Xeon(R) Gold 6338", table, 3.5) == 5.0
    assert watts_per_core("Intel(R) Xeon(R) Processor", table, 3.5) == 6.0
    assert watts_per_core("Apple M2", table, 3.5) == 3.5


def test_cpu_model_name(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: fpu\n")
    assert cpu_model_name(f) == "Intel(R) Xeon(R) Processor"
    f.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
    assert cpu_model_name(f) == ""
    assert cpu_model_name(tmp_path / "missing") == ""


def test_carbon_series_is_a_step_function(tmp_path):
    f = tmp_path / "ci.csv"
    f.write_text("time,g_per_kwh\n2026-01-01T00:00:00Z,100\n2026-01-01T12:00:00+00:00,250\n")
    times, values = read_carbon_series(f)
    m = model(carbon_times=times, carbon_values=values)
    assert m.intensity(datetime(2025, 12, 31, tzinfo=UTC)) == 100.0  # before: the first
    assert m.intensity(datetime(2026, 1, 1, 11, 59, tzinfo=UTC)) == 100.0
    assert m.intensity(datetime(2026, 1, 1, 12, 0, tzinfo=UTC)) == 250.0
    assert m.intensity(datetime(2026, 6, 1, tzinfo=UTC)) == 250.0
    f.write_text("2026-01-02T00:00:00Z,100\n2026-01-01T00:00:00Z,90\n")
    with pytest.raises(ValueError, match="ci.csv:2: times must ascend"):
        read_carbon_series(f)
    f.write_text("2026-01-02T00:00:00Z,lots\n")
    with pytest.raises(ValueError, match="ci.csv:1"):
        read_carbon_series(f)
    f.write_text("")
    with pytest.raises(ValueError, match="no carbon intensity rows"):
        read_carbon_series(f)


def test_from_settings_on_this_machine(tmp_path):
    f = tmp_path / "ci.csv"
    f.write_text("2026-01-01T00:00:00Z,42\n")
    s = TwinhubAccounting(
        cpu_watts_per_core={r"^$": 9.0, r".": 7.0}, carbon_intensity_file=str(f), pue=1.2
    )
    m = EnergyModel.from_settings(s)
    assert m.cpu_watts == (7.0 if cpu_model_name() else 9.0)
    assert (m.pue, m.intensity(datetime(2027, 1, 1, tzinfo=UTC))) == (1.2, 42.0)
    # This machine has no /sys/class/powercap: the model, said so.
    assert (m.rapl is None) == (not os.path.exists("/sys/class/powercap/intel-rapl:0/energy_uj"))


def _fake_machine(tmp_path, uj: int, busy_ticks: int, max_uj: int = 2**32):
    zone = tmp_path / "powercap" / "intel-rapl:0"
    sub = tmp_path / "powercap" / "intel-rapl:0:0"  # a sub-zone: inside the package figure
    for z in (zone, sub):
        z.mkdir(parents=True, exist_ok=True)
        (z / "energy_uj").write_text(f"{uj}\n")
        (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    # user nice system idle iowait irq softirq steal guest guest_nice
    (tmp_path / "stat").write_text(f"cpu  {busy_ticks} 0 0 99999 50 0 0 0 0 0\ncpu0 1 2 3\n")
    return tmp_path / "powercap", tmp_path / "stat"


def test_rapl_joules_per_busy_core_second(tmp_path):
    tck = os.sysconf("SC_CLK_TCK")
    powercap, stat = _fake_machine(tmp_path, uj=1_000_000, busy_ticks=0)
    r = RaplSampler(powercap, stat)
    assert r.available and [z.name for z in r.zones] == ["intel-rapl:0"]
    assert r.sample(monotonic=0.0) is None  # first sample: no span yet
    # 50 J over 10 busy core-seconds: 5 J per core-second.
    _fake_machine(tmp_path, uj=51_000_000, busy_ticks=10 * tck)
    assert r.sample(monotonic=10.0) == pytest.approx(5.0)
    assert r.sample(monotonic=10.5) == pytest.approx(5.0)  # too close: the same rate
    # The counter wrapped at max_energy_range_uj: 2**32 - 51e6 + 9e6 uJ over 20 core-s.
    _fake_machine(tmp_path, uj=9_000_000, busy_ticks=30 * tck)
    assert r.sample(monotonic=20.0) == pytest.approx((2**32 - 51_000_000 + 9_000_000) / 1e6 / 20)
    # No busy time: no rate (the model is used).
    assert r.sample(monotonic=30.0) is None
    assert not RaplSampler(tmp_path / "none", stat).available
