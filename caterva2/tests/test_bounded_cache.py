"""A bounded cache, disks that fill up, and publishers announcing absurd metadata.

- ``cat2sub --cache-size SIZE`` keeps the cache under SIZE by evicting least recently used
  replicas, never one an answer in flight uses; a read that cannot fit is a 507 saying so.
- A full disk or a file size limit is a 507, replica creation included; a dropped replica's
  file is closed (no deleted file keeps its room), no descriptor or ``.new-*`` file is
  left behind, and once there is room again reads work.
- Metadata out of sane bounds is refused with the reason; the dataset is listed as
  unreadable, its root still works, and the subscriber's memory stays small.

Unit tests of the pieces (sizes, metadata bounds, the cache) come first, then real
services.
"""
from __future__ import annotations

import contextlib
import copy
import http.client
import http.server
import json
import os
import pathlib
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2 import config, http_data
from caterva2.models import MAX_CHUNKSIZE, MAX_NCHUNKS, DatasetEntry, RootIndex
from caterva2.roots.directory import DirectoryRoot
from caterva2.services.errors import CacheTooSmall
from caterva2.services.subscriber import cache as cache_module
from caterva2.services.subscriber.leases import leasing
from caterva2.tests.harness import Service, register_root, wait_until

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads Linux's /proc")
CHUNK = 256 * 1024  # bytes of float64 per chunk in the datasets below
PACKAGE_HOME = str(pathlib.Path(cat2.__file__).resolve().parent.parent)  # (this caterva2)


def make_datasets(directory: pathlib.Path, sizes_mb: dict[str, float],
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Incompressible float64 datasets (so they take their size in the cache), in chunks
    of 256 KiB."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for name, mb in sizes_mb.items():
        a = rng.normal(size=int(mb * 2**20) // 8)
        blosc2.asarray(a, urlpath=str(directory / name), mode="w", chunks=(CHUNK // 8,),
                       blocks=(CHUNK // 64,))
        data[name] = a
    return data


def disk_use(directory: pathlib.Path) -> int:
    """What the files under ``directory`` take on disk, as ``du`` counts it (each file
    once, even if it is renamed while the walk goes on), but for ``.trash``: what the cache
    removes is renamed there and deleted at once, its room already given back."""
    seen = {}
    trash = directory / ".trash"
    for p in directory.rglob("*"):
        if p.is_relative_to(trash):
            continue
        with contextlib.suppress(FileNotFoundError):  # (removed meanwhile)
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                seen[st.st_dev, st.st_ino] = st.st_blocks * 512
    return sum(seen.values())


def replica_names(cache_dir: pathlib.Path) -> set[str]:
    """The datasets that have a replica in a subscriber's cache directory."""
    return {p.parent.parent.name for p in cache_dir.glob("roots/*/data/**/replica.b2")}


def leftovers(cache_dir: pathlib.Path) -> list[str]:
    """Temporary files a failed write may have left in a cache."""
    return [str(p) for p in cache_dir.rglob("*")
            if p.name.startswith((".new-", ".probe-")) or (p.parent.name == ".trash")]


def open_files(service: Service) -> list[str]:
    """What a service process has open (targets of /proc/PID/fd)."""
    assert service.proc is not None
    found = []
    for fd in os.listdir(f"/proc/{service.proc.pid}/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/{service.proc.pid}/fd/{fd}"))
    return found


# ---------------------------------------------------------------------------
# Sizes in settings
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("500MB", 500 * 10**6), ("20GB", 20 * 10**9), ("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30),
    ("1.5 GB", 1_500_000_000), ("4096", 4096), (4096, 4096), ("100kb", 100_000),
    ("unlimited", None), ("none", None), (None, None),
])
def test_cache_sizes_are_read_as_people_write_them(text, size):
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-5MB", "0", "0MB", "5 XB", "1e9", "", 1.5, True])
def test_bad_cache_sizes_are_refused_clearly(text):
    with pytest.raises(config.ConfigError, match="cache_size must be"):
        config.parse_size(text, "cache_size")


@pytest.mark.parametrize("args, conf, message", [
    (["--cache-size", "lots"], "", "cache_size must be a size such as 500MB"),
    ([], "[subscriber]\ncache_size = \"-1GB\"\n", "cache_size must be a size"),
    ([], "[subscriber]\ncache_size = 0\n", "cache_size must be more than zero bytes"),
])
def test_subscriber_refuses_a_bad_cache_size_at_start(tmp_path, args, conf, message):
    (tmp_path / "c.toml").write_text(conf)
    done = subprocess.run([sys.executable, "-m", "caterva2.services.subscriber", "--conf",
                           str(tmp_path / "c.toml"), "--http", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False, env={**os.environ, "PYTHONPATH": PACKAGE_HOME})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


# ---------------------------------------------------------------------------
# Metadata bounds
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_entry(tmp_path_factory) -> dict:
    """The JSON entry of a real 2-d array (shape 10x20, chunks 5x5, blocks 2x3)."""
    src = tmp_path_factory.mktemp("meta")
    blosc2.asarray(np.arange(200, dtype="uint16").reshape(10, 20), urlpath=str(src / "a.b2nd"),
                   mode="w", chunks=(5, 5), blocks=(2, 3))
    entry = DirectoryRoot(src, src / "pub").entry("a.b2nd")
    assert entry.meta is not None
    return json.loads(entry.model_dump_json())


def absurd_1d(entry: dict, shape: int, chunks: int) -> dict:
    """``entry`` made to claim a 1-d int64 array of ``shape`` items in chunks of ``chunks``
    (consistent, only huge: what the issue's publisher announced)."""
    bad = copy.deepcopy(entry)
    meta, sc = bad["meta"], bad["meta"]["schunk"]
    nchunks = -(-shape // chunks)
    meta.update(dtype="int64", dtype_descr="<i8", ndim=1, shape=[shape],
                ext_shape=[nchunks * chunks], chunks=[chunks], ext_chunks=[chunks],
                blocks=[chunks], blocksize=8 * chunks, chunksize=8 * chunks,
                size=8 * nchunks * chunks)
    sc.update(typesize=8, chunkshape=chunks, chunksize=8 * chunks, blocksize=8 * chunks,
              nchunks=nchunks, nbytes=8 * nchunks * chunks, cbytes=0)
    sc["cparams"]["typesize"] = 8
    return bad


def edited(entry: dict, **changes) -> dict:
    """A copy of ``entry`` with ``meta`` keys (``schunk__key`` for its schunk) changed."""
    bad = copy.deepcopy(entry)
    for key, value in changes.items():
        if key.startswith("schunk__"):
            bad["meta"]["schunk"][key[8:]] = value
        else:
            bad["meta"][key] = value
    return bad


@pytest.mark.parametrize("change, reason", [
    (lambda e: absurd_1d(e, 10**8, 1), f"more than the {MAX_NCHUNKS} a dataset may have"),
    (lambda e: absurd_1d(e, 2**40, 2**28), f"more than Blosc2's maximum of {MAX_CHUNKSIZE}"),
    (lambda e: edited(e, schunk__nchunks=9), "makes 8 chunks, not 9"),
    (lambda e: edited(e, shape=[10, 20, 3]), "ndim 2 does not match"),
    (lambda e: edited(e, ndim=40, shape=[1] * 40), "ndim 40 does not match"),
    (lambda e: edited(e, chunks=[0, 5]), "do not fit each other"),
    (lambda e: edited(e, blocks=[6, 3]), "do not fit each other"),
    (lambda e: edited(e, shape=[-10, 20]), "negative sizes"),
    (lambda e: edited(e, schunk__typesize=0), "typesize must be at least 1"),
    (lambda e: edited(e, schunk__nbytes=-1), "nbytes is negative"),
    (lambda e: edited(e, ext_chunks=[7, 7]), "ext_shape or ext_chunks do not follow"),
    (lambda e: edited(e, dtype_descr="<i8"), "items of 8 bytes, but typesize 2"),
    (lambda e: edited(e, dtype_descr="not a dtype"), "dtype description NumPy cannot use"),
    (lambda e: edited(e, schunk__cparams={"codec": 99}), "compression parameters"),
])
def test_metadata_out_of_bounds_makes_an_unreadable_entry_saying_why(good_entry, change,
                                                                     reason):
    assert DatasetEntry.model_validate(good_entry).meta is not None
    entry = DatasetEntry.model_validate_json(json.dumps(change(good_entry)))
    assert entry.meta is None and entry.version == good_entry["version"]
    assert entry.error is not None and entry.error.startswith("metadata refused: "), entry
    assert reason in entry.error, entry.error


def test_one_bad_entry_does_not_break_its_index(good_entry):
    index = RootIndex.model_validate_json(json.dumps({"datasets": {
        "good.b2nd": good_entry, "huge.b2nd": absurd_1d(good_entry, 10**8, 1),
        "no-version.b2nd": {"meta": good_entry["meta"]}, "nonsense.b2nd": 42}}))
    assert index.datasets["good.b2nd"].meta is not None
    assert "chunks: more than" in str(index.datasets["huge.b2nd"].error)
    for path in ("no-version.b2nd", "nonsense.b2nd"):
        assert index.datasets[path].meta is None and index.datasets[path].error


# ---------------------------------------------------------------------------
# The cache, in-process
# ---------------------------------------------------------------------------

@pytest.fixture
def source(tmp_path) -> tuple[DirectoryRoot, dict[str, np.ndarray]]:
    """A directory root of four datasets of 1 MiB each (four chunks of 256 KiB)."""
    data = make_datasets(tmp_path / "src", {f"d{i}.b2nd": 1 for i in range(4)})
    return DirectoryRoot(tmp_path / "src", tmp_path / "pub"), data


def fill(cache: cache_module.Cache, source: DirectoryRoot, name: str) -> None:
    """Read the whole of dataset ``name`` into the cache (as an answer would)."""
    entry = source.entry(name)
    replica = cache.replica("r", name, entry)
    for n in replica.missing(list(range(entry.meta.schunk.nchunks))):  # type: ignore[union-attr]
        replica.store(n, source.read_chunk(name, n))


def test_cache_evicts_least_recently_used_replicas_to_stay_under_its_limit(tmp_path, source):
    root, data = source
    names = sorted(data)
    evicted = []
    limit = 3_500_000  # three replicas of 1 MiB (and a bit), not four
    cache = cache_module.Cache(tmp_path / "cache", limit=limit, on_evict=evicted.append)
    cache.set_index("r", {name: root.entry(name) for name in names})
    for name in names[:3]:
        fill(cache, root, name)
    assert replica_names(tmp_path / "cache") == set(names[:3]) and not evicted
    cache.replica("r", names[0], root.entry(names[0]))  # d0 used again: d1 is now the oldest
    fill(cache, root, names[3])
    assert replica_names(tmp_path / "cache") == {names[0], names[2], names[3]}
    assert len(evicted) == 1 and evicted[0] > 800_000, evicted
    assert cache.usage() <= limit and disk_use(tmp_path / "cache") <= limit
    # The count kept is what the disk holds, as a new cache (a restart) finds it.
    assert cache_module.Cache(tmp_path / "cache", limit=limit).usage() == cache.usage()
    # An evicted dataset comes back whole when read again.
    fill(cache, root, names[1])
    replica = cache.replica("r", names[1], root.entry(names[1]))
    np.testing.assert_array_equal(replica.read_array((slice(None),)), data[names[1]])
    assert cache.usage() <= limit and not leftovers(tmp_path / "cache")


def test_a_leased_replica_is_never_evicted_and_a_read_that_cannot_fit_says_so(tmp_path,
                                                                             source):
    root, data = source
    names = sorted(data)
    cache = cache_module.Cache(tmp_path / "cache", limit=2_500_000)  # two replicas
    cache.set_index("r", {name: root.entry(name) for name in names})
    with leasing():  # an answer in flight reading d0
        fill(cache, root, names[0])
        with leasing():
            fill(cache, root, names[1])
        with leasing():  # d1 makes room for d2, d0 stays
            fill(cache, root, names[2])
        assert replica_names(tmp_path / "cache") == {names[0], names[2]}
        with leasing(), pytest.raises(CacheTooSmall) as error:  # (d2 used too)
            fill(cache, root, names[2])
            fill(cache, root, names[3])
        assert "too small for this read" in error.value.strerror
        assert "answers in flight" in error.value.strerror
    # Once nobody uses them, any may go.
    fill(cache, root, names[3])
    replica = cache.replica("r", names[3], root.entry(names[3]))
    np.testing.assert_array_equal(replica.read_array((slice(None),)), data[names[3]])
    assert disk_use(tmp_path / "cache") <= 2_500_000


def test_a_dropped_replica_is_closed_once_its_last_user_lets_go(tmp_path, source):
    root, _ = source
    cache = cache_module.Cache(tmp_path / "cache", limit=10**7)
    entry = root.entry("d0.b2nd")
    cache.set_index("r", {"d0.b2nd": entry})
    with leasing():
        replica = cache.replica("r", "d0.b2nd", entry)
        replica.store(0, root.read_chunk("d0.b2nd", 0))
        cache.discard("r", "d0.b2nd", entry)  # (found damaged, say)
        assert not replica.closed  # its reader still uses it
    assert replica.closed
    assert cache.usage() < 8192 and not replica_names(tmp_path / "cache")


def test_cache_starts_within_a_lowered_limit_and_clears_crash_leftovers(tmp_path, source):
    root, data = source
    names = sorted(data)
    cache = cache_module.Cache(tmp_path / "cache")
    cache.set_index("r", {name: root.entry(name) for name in names})
    for name in names:
        fill(cache, root, name)
        time.sleep(0.01)  # (distinct modification times: the order of use after a restart)
    crumbs = tmp_path / "cache/roots/r/data/d0.b2nd/.new-0123", tmp_path / "cache/.trash/x/y"
    for crumb in crumbs:
        crumb.parent.mkdir(parents=True, exist_ok=True)
        crumb.write_bytes(b"x" * 1000)
    restarted = cache_module.Cache(tmp_path / "cache", limit=2_500_000)
    assert replica_names(tmp_path / "cache") == set(names[2:]), "not the last written kept"
    assert restarted.usage() <= 2_500_000 and not leftovers(tmp_path / "cache")


# ---------------------------------------------------------------------------
# Real services
# ---------------------------------------------------------------------------

def cache_dir(sub: Service) -> pathlib.Path:
    return sub.statedir / "cache"


class DiskPeak:
    """The most a directory was seen to take on disk (see :func:`sampling_disk`)."""

    peak = 0


@contextlib.contextmanager
def sampling_disk(directory: pathlib.Path, interval: float = 0.005) -> Iterator[DiskPeak]:
    """Measure what ``directory`` takes on disk every few milliseconds, in a thread, while
    the block runs; the result's ``peak`` is the most seen."""
    result, stop = DiskPeak(), threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):  # (a file removed while measured)
                result.peak = max(result.peak, disk_use(directory))
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join(10)
        result.peak = max(result.peak, disk_use(directory))


def refused(call, *words: str) -> str:
    """Run ``call``, which must fail with a 507 (or a chunk stream ended by an error
    record, when the answer had started), saying ``words``; returns what it said."""
    with pytest.raises((cat2.ServerError, cat2.AnswerCut)) as error:
        call()
    if isinstance(error.value, cat2.ServerError):
        assert error.value.status_code == 507, error.value
    for word in words:
        assert word in str(error.value), error.value
    return str(error.value)


def test_subscriber_keeps_its_cache_under_cache_size(stack, tmp_path):
    """Reading four times what the cache may hold: it never takes more than its limit,
    the least recently used dataset goes first, an evicted dataset is fetched again when
    read (and only then), data is always right, and a read larger than the whole cache is
    a 507 that says so while smaller reads of the same dataset work."""
    data = make_datasets(tmp_path / "src", {**{f"d{i}.b2nd": 1 for i in range(4)},
                                            "big.b2nd": 5})
    proxy = stack.count_link(stack.publisher("data", tmp_path / "src"), "counted")
    try:
        limit = 3_500_000  # three datasets, not four (each is 0.93 MB on disk)
        sub = stack.subscriber(args=["--cache-size", "3.5MB"])
        wait_until(lambda: "counted" in cat2.get_roots(sub.address), what="root counted")
        assert "cat2sub: cache limit: 3.5 MB" in sub.log_tail(100), sub.log_tail(100)
        root = cat2.Root("counted", host=sub.address)

        def read(name: str) -> int:
            """Read a dataset whole, check it; the bytes that came from the publisher."""
            before = proxy.counters().down
            np.testing.assert_array_equal(root[name][:], data[name])
            return proxy.counters().down - before

        with sampling_disk(cache_dir(sub)) as disk:
            for name in ("d0.b2nd", "d1.b2nd", "d2.b2nd"):
                assert read(name) > 800_000
            assert read("d0.b2nd") == 0, "a cached dataset came from the publisher again"
            assert read("d3.b2nd") > 800_000  # d1 (read longest ago) makes room
            assert replica_names(cache_dir(sub)) == {"d0.b2nd", "d2.b2nd", "d3.b2nd"}
            assert read("d1.b2nd") > 800_000, "an evicted dataset was not fetched again"
            assert replica_names(cache_dir(sub)) == {"d0.b2nd", "d3.b2nd", "d1.b2nd"}
            assert read("d3.b2nd") == read("d0.b2nd") == 0
            refused(lambda: root["big.b2nd"][:], "too small for this read", "--cache-size")
            np.testing.assert_array_equal(root["big.b2nd"][1000:2000], data["big.b2nd"][1000:2000])
            np.testing.assert_array_equal(root["d1.b2nd"][:], data["d1.b2nd"])
        assert disk.peak <= limit, f"the cache took {disk.peak} bytes, more than {limit}"
        assert not leftovers(cache_dir(sub))
        assert "Traceback" not in sub.log_tail(10_000)
    finally:
        proxy.close()


@contextlib.contextmanager
def slow_reader(address_path: str, query: str):
    """A GET of ``HOST:PORT/PATH?QUERY`` whose answer the caller reads when it likes; a
    small receive buffer, so that a large answer is still being sent while it waits."""
    address, _, path = address_path.partition("/")
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # (before connecting)
    sock.settimeout(60)
    sock.connect((host, int(port)))
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.sock = sock
    try:
        conn.request("GET", f"/{path}?{query}")
        yield conn.getresponse()
    finally:
        conn.close()


@linux_only
def test_an_answer_in_flight_keeps_its_data(stack, tmp_path):
    """While a client is slowly reading a large answer, what that answer reads is never
    evicted: other reads make room with other data, or get a 507 saying the room is in use
    by answers in flight; the slow answer ends whole and right, and afterwards its data
    may go like any other."""
    data = make_datasets(tmp_path / "src", {"slow.b2nd": 24, "b.b2nd": 4, "c.b2nd": 4,
                                            "d.b2nd": 8})
    stack.publisher("data", tmp_path / "src")
    sub = stack.subscriber(args=["--cache-size", "28MB"])  # slow + b fit; + c do not
    wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data")
    root = cat2.Root("data", host=sub.address)
    rows = CHUNK // 8
    url = f"{sub.address}/api/fetch/data/slow.b2nd"
    seen = []

    def check(n: int, chunk: memoryview) -> None:
        got = np.frombuffer(blosc2.decompress2(chunk), dtype="f8")
        np.testing.assert_array_equal(got, data["slow.b2nd"][n * rows:(n + 1) * rows])
        seen.append(n)

    with sampling_disk(cache_dir(sub)) as disk, slow_reader(url, "slice_=:&chunks=true") as r:
        assert r.status == 200, f"the subscriber answered {r.status}"
        records = http_data.records(r, CHUNK + blosc2.MAX_OVERHEAD)
        check(*next(records))  # ... and the client stops reading for a while
        httpx.get(f"http://{sub.address}/api/download/data/slow.b2nd",
                  timeout=120).raise_for_status()  # (all of it cached now)
        np.testing.assert_array_equal(root["b.b2nd"][:], data["b.b2nd"])
        np.testing.assert_array_equal(root["c.b2nd"][:], data["c.b2nd"])  # b makes room
        assert replica_names(cache_dir(sub)) == {"slow.b2nd", "c.b2nd"}
        refused(lambda: root["d.b2nd"][:], "too small for this read", "answers in flight")
        for n, chunk in records:  # the slow answer goes on, whole and right
            check(n, chunk)
    assert sorted(seen) == list(range(24 * 2**20 // CHUNK))
    np.testing.assert_array_equal(root["d.b2nd"][:], data["d.b2nd"])  # slow may go now
    assert "d.b2nd" in replica_names(cache_dir(sub))
    assert disk.peak <= 28 * 10**6, f"the cache took {disk.peak} bytes"


@linux_only
def test_a_file_size_limit_is_a_507_and_leaves_nothing_behind(stack, tmp_path):
    """With a file size limit on the subscriber (RLIMIT_FSIZE), creating a replica and
    storing chunks fail: each read is a 507 that says why, no descriptor is leaked, no
    temporary file is left, and no dropped replica stays open; once the limit is raised,
    reads work with nothing else to do."""
    resource = pytest.importorskip("resource")
    data = make_datasets(tmp_path / "src", {"a.b2nd": 4, "b.b2nd": 1})
    stack.publisher("data", tmp_path / "src")
    sub = stack.subscriber()
    wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data")
    root = cat2.Root("data", host=sub.address)
    np.testing.assert_array_equal(root["b.b2nd"][:], data["b.b2nd"])  # (connections made)
    assert sub.proc is not None
    before = open_files(sub)

    def limit(nbytes: int) -> None:
        resource.prlimit(sub.proc.pid, resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))

    def settled() -> bool:
        now = open_files(sub)
        files = [f for f in now if f.startswith("/")]
        return (not any("(deleted)" in f or ".new-" in f for f in now)
                and len(files) <= len([f for f in before if f.startswith("/")])
                and len(now) <= len(before) + 4)  # (sockets come and go a little)

    limit(100)  # not even an empty replica fits
    for _ in range(5):
        refused(lambda: root["a.b2nd"][:], "cannot write to its disk", "File too large")
    wait_until(settled, timeout=10, what=f"no descriptor leaked: {open_files(sub)}")
    assert not leftovers(cache_dir(sub))
    limit(600_000)  # an empty replica fits, its third chunk does not
    for _ in range(3):
        refused(lambda: root["a.b2nd"][:], "cannot write to its disk", "File too large")
        np.testing.assert_array_equal(root["b.b2nd"][:5], data["b.b2nd"][:5])  # cached
    wait_until(settled, timeout=10, what=f"dropped replicas closed: {open_files(sub)}")
    assert not leftovers(cache_dir(sub))
    limit(resource.RLIM_INFINITY)
    np.testing.assert_array_equal(root["a.b2nd"][:], data["a.b2nd"])
    assert "Traceback" not in sub.log_tail(10_000)


@contextlib.contextmanager
def small_filesystem(where: pathlib.Path, size: str):
    """A tmpfs of ``size`` mounted at ``where`` for the block (the test is skipped where
    mounting is not permitted, e.g. without root)."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, text=True, check=False,
                              timeout=30)
        error = done.stderr.strip() if done.returncode else ""
    except OSError as e:  # (no mount command)
        error = str(e)
    if error:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {error}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def free_space(where: pathlib.Path) -> int:
    stats = os.statvfs(where)
    return stats.f_bavail * stats.f_frsize


@linux_only
def test_a_full_small_disk_is_a_507_and_its_room_comes_back(stack, tmp_path):
    """The issue's case on a real (small) filesystem: a read larger than the disk fills it
    and is a 507 (replica creation failing included, never a 500), the dropped replica's
    room comes back at once (no deleted file held open), no descriptor or temporary file
    is left, and reads work again.  Then the same disk with --cache-size: reads far beyond
    the disk's size all work, least recently used data making room."""
    data = make_datasets(tmp_path / "src", {"big.b2nd": 24, **{f"d{i}.b2nd": 5 for i in range(4)}})
    stack.publisher("data", tmp_path / "src")
    cache = tmp_path / "state" / "sub" / "cache"
    with small_filesystem(cache, "16m"):
        sub = stack.subscriber()
        wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data")
        root = cat2.Root("data", host=sub.address)
        np.testing.assert_array_equal(root["d0.b2nd"][:10], data["d0.b2nd"][:10])
        empty = free_space(cache)
        before = open_files(sub)
        for _ in range(3):
            refused(lambda: root["big.b2nd"][:], "cannot write to its disk",
                    "No space left on device")
        wait_until(lambda: free_space(cache) >= empty - 2**20, timeout=10,
                   what=f"the dropped replica's room back: {open_files(sub)}")
        now = open_files(sub)
        assert not any("(deleted)" in f for f in now), now
        assert len(now) <= len(before) + 4, (before, now)
        assert not leftovers(cache)
        for name in ("d1.b2nd", "d2.b2nd"):
            np.testing.assert_array_equal(root[name][:], data[name])

        sub.args += ["--cache-size", "12MB"]
        sub.restart()  # (starts within its bound: evicts least recently written data)
        assert disk_use(cache) <= 12 * 10**6
        with sampling_disk(cache) as disk:
            for _ in range(2):
                for name in ("d0.b2nd", "d1.b2nd", "d2.b2nd", "d3.b2nd"):
                    np.testing.assert_array_equal(root[name][:], data[name])
            refused(lambda: root["big.b2nd"][:], "too small for this read")
        assert disk.peak <= 12 * 10**6, disk.peak
        sub.stop()
        assert "Traceback" not in sub.log_tail(10_000)


class FakePublisher:
    """A publisher that announces whatever entries it is given (and serves no data), on a
    loopback port, in a thread."""

    def __init__(self, entries: dict[str, dict]):
        self.entries = entries
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # (the standard library's name)
                if self.path == "/api/index":
                    self._json({"datasets": outer.entries})
                elif self.path.startswith("/api/info/") and \
                        self.path[len("/api/info/"):] in outer.entries:
                    self._json(outer.entries[self.path[len("/api/info/"):]])
                else:
                    self.send_error(404)

            def _json(self, value) -> None:
                body = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@linux_only
def test_a_publisher_announcing_absurd_metadata(stack, good_entry):
    """The issue's publisher announcing a dataset of shape [1e8] in chunks of [1] (and
    one whose chunk count does not match its shape): the root still works, both are listed,
    reading them is a 503 that says what was refused, and the subscriber stays small
    (before, it grew to 3 GB and failed with a MemoryError)."""
    fake = FakePublisher({"fine.b2nd": good_entry,
                          "huge.b2nd": absurd_1d(good_entry, 10**8, 1),
                          "twisted.b2nd": edited(good_entry, schunk__nchunks=9)})
    try:
        sub = stack.subscriber()
        register_root(stack.broker.address, "absurd", fake.address).raise_for_status()
        wait_until(lambda: "absurd" in cat2.get_roots(sub.address), what="root absurd")
        start = sub.peak_memory_mb()
        assert cat2.subscribe("absurd", sub.address) == "Ok"
        assert cat2.get_list("absurd", sub.address) == ["fine.b2nd", "huge.b2nd",
                                                         "twisted.b2nd"]
        assert cat2.get_info("absurd/fine.b2nd", sub.address)["shape"] == [10, 20]
        for path, reason in (("huge.b2nd", "100000000 chunks: more than the 4194304"),
                             ("twisted.b2nd", "makes 8 chunks, not 9")):
            for call in (lambda p=path: cat2.get_info(f"absurd/{p}", sub.address),
                         lambda p=path: cat2.fetch(f"absurd/{p}", sub.address, "0:10"),
                         lambda p=path: cat2.Root("absurd", host=sub.address)[p].download()):
                with pytest.raises(cat2.ServerError) as error:
                    call()
                assert error.value.status_code == 503, error.value
                assert "metadata refused" in str(error.value), error.value
                assert reason in str(error.value), error.value
        grown = sub.peak_memory_mb() - start
        assert grown < 50, f"the subscriber grew by {grown:.0f} MiB"
        assert "Traceback" not in sub.log_tail(10_000)
    finally:
        fake.close()


def test_many_clients_on_a_small_cache(stack, tmp_path):
    """Eight clients reading six datasets at once through a cache that holds three: every
    answer is whole and right, or a 507 saying the cache is too small (when answers in
    flight hold all of it); never a 500, a wrong byte, a hang, or more than the limit."""
    from concurrent.futures import ThreadPoolExecutor

    data = make_datasets(tmp_path / "src", {f"d{i}.b2nd": 1 for i in range(6)})
    stack.publisher("data", tmp_path / "src")
    sub = stack.subscriber(args=["--cache-size", "3.5MB"])
    wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data")
    root = cat2.Root("data", host=sub.address)
    names = sorted(data)
    rng = np.random.default_rng(7)
    plan = [(names[i], bool(rng.integers(2))) for i in rng.integers(0, len(names), 96)]

    def read(job: tuple[str, bool]) -> str:
        name, whole = job
        key = slice(None) if whole else slice(50_000, 70_000)  # (one chunk or two)
        try:
            np.testing.assert_array_equal(root[name][key], data[name][key])
        except (cat2.ServerError, cat2.AnswerCut) as e:
            if isinstance(e, cat2.ServerError) and e.status_code != 507:
                time.sleep(1)  # (so that the subscriber's log has its side of it)
                raise AssertionError(f"{e}; the subscriber's log:\n{sub.log_tail(6000)}")
            assert "too small for this read" in str(e), e
            return "refused"
        return "read"

    with sampling_disk(cache_dir(sub)) as disk, ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(read, plan, timeout=120))
    assert outcomes.count("read") > len(plan) // 2, outcomes
    assert disk.peak <= 3_500_000, f"the cache took {disk.peak} bytes"
    for name in names:  # and afterwards, with nobody else reading, everything reads
        np.testing.assert_array_equal(root[name][:], data[name])
    assert not leftovers(cache_dir(sub))
    assert "Traceback" not in sub.log_tail(10_000)
