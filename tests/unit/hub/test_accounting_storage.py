"""Storage sampling without a store: home directories walked like ``du -x`` on real files, the
bound on how much is walked, a walk that no symbolic link swapped in redirects, the walk in a
child process as the home's user, and the backend's gauge readings between samples.

Bucket listing against the real embedded store: tests/integration/test_accounting_storage.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from traitlets.config import Config

from twinhub.process.runtime import Runtime
from twinhub.services.accounting import backend_storage, storage_walk
from twinhub.services.accounting.backend_storage import (
    GIB,
    Home,
    StorageBackend,
    measure_home,
    tree_size,
)
from twinhub.services.accounting.config import TwinhubAccounting


def _du(path: Path) -> int:
    """What GNU du says (allocated bytes, one file system, hard links once)."""
    out = subprocess.run(["du", "-x", "-s", "-B1", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def test_tree_size_counts_allocated_blocks_like_du(tmp_path):
    home = tmp_path / "home"
    (home / "a" / "b").mkdir(parents=True)
    (home / "a" / "b" / "data.bin").write_bytes(os.urandom(3 * 2**20 + 17))
    (home / "small.txt").write_text("x")
    (home / "sparse").write_bytes(b"")
    with open(home / "sparse", "r+b") as f:  # 1 GiB apparent, nothing allocated
        f.truncate(GIB)
    os.link(home / "a" / "b" / "data.bin", home / "hardlink.bin")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(os.urandom(2**20))
    (home / "link").symlink_to(outside)
    (home / "dirlink").symlink_to(tmp_path)  # a loop if it were followed
    size = tree_size(home, 1000)
    assert not size.truncated
    assert size.bytes == _du(home)
    # The file's bytes count once (hard link), the sparse file's hole and the link's target not.
    assert 3 * 2**20 <= size.bytes < 3 * 2**20 + 200 * 1024


def test_tree_size_stops_at_the_bound_with_a_lower_bound(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(b"y" * 5000)
    full = tree_size(tmp_path, 1000)
    part = tree_size(tmp_path, 10)
    assert part.truncated and not full.truncated
    assert 0 < part.bytes < full.bytes


def test_tree_size_of_missing_or_unreadable_paths(tmp_path):
    assert tree_size(tmp_path / "nope", 10).bytes == 0
    f = tmp_path / "file"
    f.write_bytes(b"z" * 10000)
    assert tree_size(f, 10).bytes == os.lstat(f).st_blocks * 512


def test_backend_samples_in_the_background_and_gives_the_last_size_each_tick(tmp_path, monkeypatch):
    rt = Runtime(state_dir=tmp_path, config=Config(), instance_id="t")
    home = tmp_path / "home-ada"
    home.mkdir()
    (home / "f").write_bytes(os.urandom(2**20))
    started = threading.Event()
    go = threading.Event()

    def homes(_rt):
        started.set()
        assert go.wait(10)
        return {"ada": Home(str(home), 0, 0)}

    # The OS accounts table and the object store are the integration test's; here only the
    # sampling and the ticks: the home list comes from this function, no bucket is listed.
    monkeypatch.setattr(backend_storage, "home_dirs", homes)
    monkeypatch.setattr(StorageBackend, "_buckets", lambda self: [])
    now = [0.0]
    settings = TwinhubAccounting(storage_interval=300.0)
    b = StorageBackend(rt, settings, clock=lambda: now[0])
    t = datetime(2026, 12, 5, tzinfo=UTC)
    assert b.read([], t) == []  # first tick: the sample starts, nothing known yet
    assert started.wait(10)
    assert b.read([], t) == []  # the tick does not wait for the sample
    go.set()
    b.wait(10)
    (r,) = b.read([], t)
    assert (r.source.source_id, r.source.user, r.source.project) == ("home:ada", "ada", None)
    assert (r.resource, r.kind, r.method, r.at) == ("storage", "gauge", "du", t)
    assert r.value == pytest.approx(_du(home) / GIB)
    # More data: the ticks before storage_interval keep the sampled size...
    (home / "g").write_bytes(os.urandom(2**20))
    started.clear()
    now[0] = 299.0
    assert b.read([], t)[0].value == r.value and not started.is_set()
    # ... the first after it starts a new sample, whose size the next ticks give.
    now[0] = 301.0
    b.read([], t)
    b.wait(10)
    assert b.read([], t)[0].value == pytest.approx(_du(home) / GIB)
    assert b.read([], t)[0].value > r.value


class _FakeS3:
    """A fake S3 client (the real store is the integration test's): unreachable until
    ``up``, then one page with two objects."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    def list_objects_v2(self, **kw):
        self.calls += 1
        if not self.up:
            raise ConnectionError("store still starting")
        return {"Contents": [{"Key": "a", "Size": 100}, {"Key": "b", "Size": 23}],
                "IsTruncated": False}  # fmt: skip


def test_a_failed_sample_is_retried_after_30_s_not_storage_interval(tmp_path, monkeypatch):
    rt = Runtime(state_dir=tmp_path, config=Config(), instance_id="t")
    s3 = _FakeS3()
    src = backend_storage.Source("bucket:project-x", "", "x", "storage", "project-x")
    monkeypatch.setattr(backend_storage, "home_dirs", lambda _rt: {})
    monkeypatch.setattr(StorageBackend, "_buckets", lambda self: [(src, "project-x")])
    now = [0.0]
    b = StorageBackend(rt, TwinhubAccounting(storage_interval=300.0), s3=lambda: s3,
                       clock=lambda: now[0])  # fmt: skip
    t = datetime(2026, 12, 5, tzinfo=UTC)
    b.read([], t)
    b.wait(10)
    assert b.read([], t) == []  # never measured: no reading
    s3.up = True
    now[0] = backend_storage.RETRY_AFTER - 1
    b.read([], t)
    b.wait(10)
    assert b.read([], t) == []  # not yet due
    now[0] = backend_storage.RETRY_AFTER + 1
    b.read([], t)
    b.wait(10)
    (r,) = b.read([], t)
    assert r.value * GIB == 123 and r.source == src
    # A complete sample: the next is storage_interval later, and a failure keeps the last size.
    calls, s3.up = s3.calls, False
    now[0] += 2 * backend_storage.RETRY_AFTER
    b.read([], t)
    b.wait(10)
    assert s3.calls == calls
    now[0] += 300
    b.read([], t)
    b.wait(10)
    assert s3.calls == calls + 1
    assert b.read([], t)[0].value * GIB == 123


# -- a walk nothing in the home redirects (symbolic links swapped in while walking) ---------
def _tree(home: Path, victim: Path) -> None:
    """``home/a/b/own.bin`` (64 KiB) and, outside the home, ``victim/b/secret.bin`` (4 MiB)
    laid out alike, so that a walk redirected into ``victim`` finds the same names."""
    (home / "a" / "b").mkdir(parents=True)
    (home / "a" / "b" / "own.bin").write_bytes(os.urandom(64 * 1024))
    (victim / "b").mkdir(parents=True)
    (victim / "b" / "secret.bin").write_bytes(os.urandom(4 * 2**20))


def _race_at(monkeypatch, name: str, swap) -> list[str]:
    """Swap with ``swap()`` when the walk is about to enter ``name``, after listing its
    parent: the user winning the race (a fake race: the walker's hook, see storage_walk)."""
    done: list[str] = []

    def before_enter(dir_fd: int, entered: str) -> None:
        if entered == name and not done:
            swap()
            done.append(entered)

    monkeypatch.setattr(storage_walk, "before_enter", before_enter)
    return done


@pytest.mark.parametrize("at", ["a", "b"])
def test_a_directory_swapped_for_a_link_while_walking_never_counts_the_other_tree(
    tmp_path, monkeypatch, at
):
    home, victim = tmp_path / "home", tmp_path / "victim"
    _tree(home, victim)
    honest = tree_size(home, 1000)
    assert 64 * 1024 <= honest.bytes < 2**20 and not honest.truncated

    def swap() -> None:
        # "a" replaced by a link to the other tree: at "a", just before the walk opens it;
        # at "b", once the walk is inside "a" (the link is then a component of b's path).
        (home / "a").rename(home / "a.old")
        (home / "a").symlink_to(victim, target_is_directory=True)

    done = _race_at(monkeypatch, at, swap)
    w = storage_walk.tree_size(home, 1000)
    assert done == [at]
    assert w.bytes < 2**20, "the walk went into the other tree"
    if at == "a":  # refused to open the link: a is not entered, and says so
        assert w.swapped == 1 and w.bytes < honest.bytes
    else:  # the walk holds a's own descriptor: b is the real one, counted as before
        assert w.swapped == 0 and w.bytes == honest.bytes


def test_a_directory_swapped_for_another_directory_is_not_entered(tmp_path, monkeypatch):
    home, victim = tmp_path / "home", tmp_path / "victim"
    _tree(home, victim)

    def swap() -> None:  # a real directory now in its place, not the one listed
        (home / "a").rename(home / "a.old")
        victim.rename(home / "a")

    done = _race_at(monkeypatch, "a", swap)
    size = tree_size(home, 1000)
    assert done == ["a"]
    assert size.bytes < 2**20 and size.truncated and "replaced while walked" in size.why


def test_the_home_itself_as_a_link_counts_only_the_link(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x").write_bytes(os.urandom(2**20))
    (tmp_path / "home").symlink_to(victim)
    got = tree_size(tmp_path / "home", 1000).bytes
    assert got == os.lstat(tmp_path / "home").st_blocks * 512 < 2**20


def test_the_walk_stops_at_its_time_bound(tmp_path):
    for i in range(20):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_bytes(b"q" * 5000)
    ticks = iter(range(10**6))  # a fake clock: one second per look at it
    w = storage_walk.tree_size(tmp_path, 10**6, seconds=10, clock=lambda: next(ticks))
    full = storage_walk.tree_size(tmp_path, 10**6)
    assert w.truncated and not full.truncated and w.bytes < full.bytes


def test_the_depth_bound_skips_only_what_is_too_deep(tmp_path, monkeypatch):
    monkeypatch.setattr(storage_walk, "MAX_DEPTH", 5)
    deep = tmp_path / "deep"
    deep.joinpath(*["d"] * 8).mkdir(parents=True)
    deep.joinpath(*["d"] * 8, "far.bin").write_bytes(os.urandom(2**20))
    (tmp_path / "near.bin").write_bytes(os.urandom(2**20))
    w = storage_walk.tree_size(tmp_path, 1000)
    assert w.truncated and 2**20 <= w.bytes < 2 * 2**20  # near.bin counted, far.bin not


def test_other_file_systems_are_not_entered_nor_stated(tmp_path):
    home = tmp_path / "home"
    (home / "mnt").mkdir(parents=True)
    (home / "f").write_bytes(os.urandom(2**20))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "none", str(home / "mnt")],
                      capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (not root / no CAP_SYS_ADMIN)")
    try:
        (home / "mnt" / "big").write_bytes(os.urandom(8 * 2**20))
        assert storage_walk.mount_points(str(home)) == {str(home / "mnt")}
        size = tree_size(home, 1000)
        assert size.bytes == _du(home) and size.bytes < 2 * 2**20
    finally:
        subprocess.run(["umount", str(home / "mnt")], check=True)


# -- the walk in a child process, as the home's user, killed when it hangs -----------------
@pytest.fixture
def nobody_home():
    """A home owned by ``nobody`` (the walk's user) holding 1 MiB of its own and a directory
    of root's it may not read, under a directory ``nobody`` can reach (pytest's tmp is 0700)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to walk as another user")
    base = Path(tempfile.mkdtemp(prefix="acct-walk-"))
    base.chmod(0o755)
    home = base / "home"
    home.mkdir()
    (home / "mine.bin").write_bytes(os.urandom(2**20))
    (home / "roots").mkdir(mode=0o700)
    (home / "roots" / "secret.bin").write_bytes(os.urandom(3 * 2**20))
    os.chown(home, 65534, 65534)
    os.chown(home / "mine.bin", 65534, 65534)
    yield home
    shutil.rmtree(base)


def test_the_walk_runs_as_the_homes_user(nobody_home):
    as_root = measure_home(Home(str(nobody_home), 0, 0), 1000, 30)
    as_nobody = measure_home(Home(str(nobody_home), 65534, 65534), 1000, 30)
    assert as_root is not None and as_nobody is not None
    assert as_root.bytes == _du(nobody_home) and not as_root.truncated
    # Root's directory is unreadable to nobody: not counted, and the figure says so.
    assert as_nobody.bytes < as_root.bytes - 2 * 2**20
    assert as_nobody.bytes >= 2**20
    assert as_nobody.truncated and "unreadable" in as_nobody.why


def test_a_hung_walk_is_killed_and_the_home_keeps_its_last_size(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "f").write_bytes(os.urandom(2**20))
    monkeypatch.setattr(backend_storage, "home_dirs", lambda _rt: {"ada": Home(str(home), 0, 0)})
    monkeypatch.setattr(StorageBackend, "_buckets", lambda self: [])
    rt = Runtime(state_dir=tmp_path, config=Config(), instance_id="t")
    b = StorageBackend(rt, TwinhubAccounting(storage_walk_timeout=0.5))
    first = b.sample()["home:ada"]
    assert first * GIB == _du(home)
    # A fake hung file system: the walk's child never returns (its source replaced by a sleep).
    monkeypatch.setattr(backend_storage, "_walk_source", lambda: "import time; time.sleep(60)")
    monkeypatch.setattr(backend_storage, "KILL_MARGIN", 1.0)
    t0 = time.monotonic()
    assert b.sample() == {}
    assert time.monotonic() - t0 < 10
    (r,) = b.read([], datetime.now(UTC))
    assert r.value == first


class _BlockingS3:
    """A fake S3 whose listing hangs until released (a store that stalls)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def list_objects_v2(self, **kw):
        assert self.release.wait(30)
        return {"Contents": [{"Key": "k", "Size": 7}], "IsTruncated": False}


def test_buckets_and_homes_are_sampled_in_separate_threads(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "f").write_bytes(os.urandom(2**20))
    src = backend_storage.Source("bucket:project-x", "", "x", "storage", "project-x")
    monkeypatch.setattr(backend_storage, "home_dirs", lambda _rt: {"ada": Home(str(home), 0, 0)})
    monkeypatch.setattr(StorageBackend, "_buckets", lambda self: [(src, "project-x")])
    s3 = _BlockingS3()
    rt = Runtime(state_dir=tmp_path, config=Config(), instance_id="t")
    b = StorageBackend(rt, TwinhubAccounting(), s3=lambda: s3)
    t = datetime(2026, 12, 5, tzinfo=UTC)
    b.read([], t)
    deadline = time.monotonic() + 20
    while not b.read([], t) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The home is measured while the bucket listing still hangs.
    assert [r.source.source_id for r in b.read([], t)] == ["home:ada"]
    s3.release.set()
    b.wait(10)
    assert sorted(r.source.source_id for r in b.read([], t)) == ["bucket:project-x", "home:ada"]
