"""twinlab.datalake.open from S3: the platform's own SeaweedFS (signed S3, the same
configuration as `twinhub up` writes) with a lake bucket that the user can only read, and
the user's credentials in the environment exactly as a user server gets them."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("boto3")
pyproj = pytest.importorskip("pyproj")  # before ecCodes
ec = pytest.importorskip("eccodes")
xr = pytest.importorskip("xarray")
pystac = pytest.importorskip("pystac")
dask_array = pytest.importorskip("dask.array")

import twinlab.datalake as dl  # noqa: E402
import twinlab.grids as grids  # noqa: E402
from twinhub import objectstore  # noqa: E402
from twinhub.objectstore import seaweed  # noqa: E402
from twinhub.process import ports  # noqa: E402
from twinhub.process.runtime import Runtime  # noqa: E402

USER = ("alice", "DLTESTALICEKEY", "dl-test-alice-secret-0123456789", "home-alice")
NSIDE = 16


def _grib(path: Path, nside: int = NSIDE) -> np.ndarray:
    values = np.linspace(220.0, 310.0, 12 * nside * nside)
    h = ec.codes_grib_new_from_samples("GRIB2")
    try:
        ec.codes_set(h, "gridDefinitionTemplateNumber", 150)
        ec.codes_set(h, "Nside", nside)
        ec.codes_set(h, "orderingConvention", "ring")
        ec.codes_set(h, "longitudeOfFirstGridPointInDegrees", 45)
        ec.codes_set(h, "shortName", "2t")
        ec.codes_set(h, "dataDate", 20200101)
        ec.codes_set(h, "packingType", "grid_simple")  # before bitsPerValue
        ec.codes_set(h, "bitsPerValue", 16)
        ec.codes_set_values(h, values)
        with open(path, "wb") as f:
            ec.codes_write(h, f)
    finally:
        ec.codes_release(h)
    return values


def _create_lake(admin: Any) -> bool:
    """True once the store answers signed requests and the lake bucket exists."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        admin.create_bucket(Bucket="lake")
    except ClientError as e:
        return e.response["Error"]["Code"] in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou")
    except BotoCoreError:
        return False
    return True


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """SeaweedFS as the platform runs it, with the lake filled by the admin."""
    state = tmp_path_factory.mktemp("dl-s3-state")
    rt = Runtime(state_dir=state, instance_id="dltest")
    for sub in ("secrets", "run", "logs"):
        (state / sub).mkdir(mode=0o700, exist_ok=True)
    for key in seaweed.PORT_KEYS.values():
        rt.ports[key] = ports.pick_port()
    rt.save()
    seaweed.write_config(rt)
    seaweed.write_identities(
        rt,
        seaweed.identities(
            objectstore.admin_keys(rt), [USER], objectstore.settings(rt).lake_bucket
        ),
    )
    log = open(state / "logs" / "object-store.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinhub.objectstore.run"],
        env={**os.environ, "TWINHUB_STATE": str(state)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        admin = objectstore.admin_client(rt)
        deadline = time.monotonic() + 60
        while not _create_lake(admin):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "SeaweedFS did not start: "
                    + (state / "logs" / "object-store.log").read_text()[-2000:]
                )
            time.sleep(0.3)
        src = tmp_path_factory.mktemp("dl-s3-src")
        values = _grib(src / "f.grib2")
        admin.put_object(
            Bucket="lake",
            Key="climate-dt/h16/2t/20200101.grib2",
            Body=(src / "f.grib2").read_bytes(),
        )
        ds = xr.Dataset(
            {
                "2t": (("time", "cell"), values[None, :].astype("float32")),
                "tp": (("time", "cell"), np.zeros((1, values.size), "float32")),
            },
            coords={"time": np.array(["2020-01-01"], dtype="datetime64[ns]")},
        ).grid.assign(grids.HEALPix(NSIDE, False, dims=("cell",)))
        ds.to_zarr(src / "h16.zarr", zarr_format=3, consolidated=False)
        ds.to_netcdf(src / "h16.nc", engine="h5netcdf")
        admin.put_object(Bucket="lake", Key="climate-dt/h16.nc", Body=(src / "h16.nc").read_bytes())
        for f in sorted((src / "h16.zarr").rglob("*")):
            if f.is_file():
                key = "climate-dt/h16.zarr/" + f.relative_to(src / "h16.zarr").as_posix()
                admin.put_object(Bucket="lake", Key=key, Body=f.read_bytes())
        yield {"rt": rt, "values": values, "endpoint": objectstore.endpoint(rt)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        for port in rt.ports.values():
            ports.release_port(port)


@pytest.fixture
def user_env(s3, monkeypatch, tmp_path) -> dict[str, Any]:
    """The environment a user server gets (objectstore.user_environment's variables)."""
    name, access, secret, home = USER
    env = {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": s3["endpoint"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "TWINHUB_STORAGE": json.dumps(
            {"endpoint": s3["endpoint"], "lake_bucket": "lake", "home_bucket": home}
        ),
        "TWINLAB_CACHE_DIR": str(tmp_path / "cache"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # credentials are read when a client is made
    return {**s3, "cache": tmp_path / "cache"}


URL = "s3://lake/climate-dt/h16/2t/20200101.grib2"


def test_grib_from_s3_is_copied_privately_and_opened(user_env):
    seen: list[tuple[int, int]] = []
    ds = dl.open(URL, "2t", progress=lambda done, total: seen.append((done, total)))
    assert list(ds.data_vars) == ["2t"]
    assert grids.from_dataset(ds).key == f"healpix-n{NSIDE}-ring"
    np.testing.assert_allclose(ds["2t"].values.reshape(-1), user_env["values"], atol=2e-3)
    size = seen[-1][1]
    assert seen and seen[-1] == (size, size)
    cache = user_env["cache"]
    files = [p for p in cache.iterdir()]
    assert len(files) == 1 and files[0].suffix == ".grib2" and files[0].stat().st_size == size
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    # a second open reuses the copy: no download, same file
    again: list[Any] = []
    dl.open(URL, progress=lambda *a: again.append(a))
    assert again == [] and [p for p in cache.iterdir()] == files


def test_large_downloads_log_their_progress(user_env, monkeypatch, caplog):
    from twinlab.datalake import opening

    # shrink "large" and the read size so this small file counts as large, in 4 blocks
    monkeypatch.setattr(opening, "PROGRESS_ABOVE", 1)
    monkeypatch.setattr(opening, "COPY_BLOCK", 1 + (12 * NSIDE * NSIDE * 2) // 4)
    with caplog.at_level("INFO", logger="twinlab.datalake.opening"):
        dl.open(URL)
    lines = [r.getMessage() for r in caplog.records if r.name == "twinlab.datalake.opening"]
    assert lines and all(line.startswith(f"downloading {URL}: ") for line in lines)
    assert lines[-1].startswith(f"downloading {URL}: 100% of")
    assert len(lines) >= 3  # several steps, not one line at the end


def test_interrupted_download_leaves_no_file(user_env):
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dl.open(URL, progress=stop)
    assert not user_env["cache"].exists() or list(user_env["cache"].iterdir()) == []


def test_zarr_from_s3_is_lazy_and_detected(user_env):
    ds = dl.open("s3://lake/climate-dt/h16.zarr", "2t")
    assert isinstance(ds["2t"].data, dask_array.Array)
    assert ds["2t"].attrs["grid_type"] == "healpix"
    np.testing.assert_allclose(ds["2t"].values[0], user_env["values"], rtol=1e-6)


def test_netcdf_from_s3_reads_through_s3fs(user_env):
    ds = dl.open("s3://lake/climate-dt/h16.nc", "2t")
    assert grids.from_dataset(ds).key == f"healpix-n{NSIDE}-ring"
    np.testing.assert_allclose(ds["2t"].values[0], user_env["values"], rtol=1e-6)


def test_item_with_s3_assets_prefers_zarr_and_falls_back_to_grib(user_env):
    item = pystac.Item(
        "h16-2t",
        None,
        None,
        None,
        {
            "param": "2t",
            "start_datetime": "2020-01-01T00:00:00Z",
            "end_datetime": "2020-01-01T23:00:00Z",
        },
    )
    item.add_asset("grib", pystac.Asset(URL, media_type="application/x-grib"))
    item.add_asset(
        "zarr", pystac.Asset("s3://lake/climate-dt/h16.zarr", media_type="application/vnd+zarr")
    )
    z = dl.open(item)
    g = dl.open(item, asset="grib")
    assert (z.attrs["stac_asset"], g.attrs["stac_asset"]) == ("zarr", "grib")
    np.testing.assert_allclose(g["2t"].values.reshape(-1), z["2t"].values.reshape(-1), atol=2e-3)


def test_missing_and_forbidden_objects_are_named(user_env, s3):
    with pytest.raises(FileNotFoundError, match="no object at s3://lake/climate-dt/nope.grib2"):
        dl.open("s3://lake/climate-dt/nope.grib2")
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        dl.open("s3://lake/nope.zarr")
    # another user's bucket: SeaweedFS refuses alice's signed requests
    objectstore.admin_client(s3["rt"]).create_bucket(Bucket="home-bob")
    objectstore.admin_client(s3["rt"]).put_object(Bucket="home-bob", Key="x.grib2", Body=b"GRIB")
    with pytest.raises(PermissionError, match="not allowed to read s3://home-bob/x.grib2"):
        dl.open("s3://home-bob/x.grib2")
    with pytest.raises(FileNotFoundError, match="no NetCDF file at s3://lake/nope.nc"):
        dl.open("s3://lake/nope.nc")
    with pytest.raises(PermissionError, match="s3://home-bob/y.nc"):
        dl.open("s3://home-bob/y.nc")
    with pytest.raises(PermissionError, match="s3://home-bob/z.zarr"):
        dl.open("s3://home-bob/z.zarr")
