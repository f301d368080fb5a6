"""``cat2sub --workers N``: several processes serve one port and one cache.

Real processes throughout: a publisher behind a counting proxy (so that every byte it sends
is seen), a subscriber with two workers (the owner and one front), clients that open a new
connection for every request (so that both workers get some).
"""
from __future__ import annotations

import os
import pathlib
import signal
import ssl
import subprocess
import sys
import threading
import time

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2 import wire
from caterva2.tests.harness import wait_until
from caterva2.tests.test_tls import pki  # noqa: F401 - a fixture

SHAPE, CHUNKS = (400, 400), (100, 100)  # 16 chunks of 80 kB
README = b"This is a simple example,\nwith several lines,\nfor showing purposes.\n"
NCHUNKS = 16
DEADLINE_S = 60  # no loop below runs longer than this


def workers_of(pid: int) -> list[int]:
    """The front workers of the subscriber ``pid`` (its child processes)."""
    children = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def read(host: str, dataset: str, slice_: str, shape, dtype="f8") -> np.ndarray:
    """One read on a connection of its own (so that any worker may take it)."""
    r = httpx.get(f"http://{host}/api/fetch/{dataset}",
                  params={"slice_": slice_, "buffer": "true"},
                  headers={"Connection": "close"}, timeout=30)
    assert r.status_code == 200, r.text
    return wire.decompress_items(r.content, np.dtype(dtype), shape)


@pytest.fixture
def site(stack, tmp_path):
    """Root ``data`` published behind a counting proxy, and a subscriber with two workers
    following it."""
    src = tmp_path / "data"
    src.mkdir()
    serving, link = stack.counted_publisher("data", src)

    class Site:
        source = src
        publisher = serving
        sub = stack.subscriber(args=["--workers", "2"])
        counted = link

        def cache(self) -> dict:
            return httpx.get(f"http://{self.sub.address}/api/cache", timeout=30).json()

    wait_until(lambda: "data" in cat2.get_roots(Site.sub.address), what="root data")
    assert cat2.subscribe("data", Site.sub.address) == "Ok"
    try:
        yield Site()
    finally:
        link.close()


def publish(site, data: np.ndarray, name: str = "a.b2nd") -> None:
    blosc2.asarray(data, urlpath=str(site.source / name), mode="w", chunks=CHUNKS,
                   blocks=CHUNKS)
    wait_until(lambda: name in cat2.get_list("data", site.sub.address), what=name)


def test_concurrent_cold_reads_fetch_each_chunk_once_and_keep_the_cache_whole(site):
    data = np.random.default_rng(1).normal(size=SHAPE)
    publish(site, data)
    host = site.sub.address
    fronts = workers_of(site.sub.proc.pid)
    assert len(fronts) == 1  # one front beside the owner
    source = blosc2.open(str(site.source / "a.b2nd"))
    cbytes = sum(len(source.schunk.get_chunk(n)) for n in range(NCHUNKS))
    before = site.counted.counters().down
    selections = [(":,:", (slice(None), slice(None))), ("0:200,0:400", (slice(0, 200),)),
                  ("100:400,0:200", (slice(100, 400), slice(0, 200)))]
    errors: list[str] = []

    def client(k: int) -> None:
        try:
            for i in range(6):
                text, key = selections[(k + i) % len(selections)]
                expected = data[key]
                out = read(host, "data/a.b2nd", text, expected.shape)
                if not np.array_equal(out, expected):
                    errors.append(f"client {k}: wrong data for [{text}]")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert not errors, errors
    assert workers_of(site.sub.proc.pid) == fronts, "the front died while the cache filled"
    moved = site.counted.counters().down - before
    # Each chunk crossed the link once (80 kB each: a second copy of any would show).
    assert cbytes <= moved < cbytes + 20_000, f"{moved} bytes moved for {cbytes} of chunks"
    figures = site.cache()
    assert figures["bytes_in"] == cbytes, figures

    # Cached reads, spread over both workers: the figures of both add up.
    time.sleep(1)  # (the front's last report is in)
    hits = site.cache()["hits"]
    for _ in range(20):
        np.testing.assert_array_equal(read(host, "data/a.b2nd", "0:100,0:100", (100, 100)),
                                      data[:100, :100])
    # (the front reports every half second; asked of the front, the figures include its
    # last reads at once, asked of the owner, within half a second)
    wait_until(lambda: site.cache()["hits"] == hits + 20, timeout=5, what="hits added up")
    time.sleep(1)
    assert site.cache()["hits"] == hits + 20  # (each counted once)
    metrics = httpx.get(f"http://{host}/metrics").text
    answered = [line for line in metrics.splitlines()
                if line.startswith("caterva2_front_answers_total")]
    assert answered, "the front answered nothing itself"
    assert site.counted.counters().down == before + moved  # (nothing fetched again)

    # The cache as written is whole: one worker after a restart finds every chunk there.
    site.sub.stop()
    site.sub.args = ["--workers", "1"]
    site.sub.start()
    np.testing.assert_array_equal(cat2.Root("data", host=site.sub.address)["a.b2nd"][:], data)
    figures = site.cache()  # (since the restart)
    assert figures["bytes_in"] == 0 and figures["digest_mismatches"] == 0, figures
    assert figures["hits"] == NCHUNKS, figures


def test_a_dataset_changed_while_both_workers_serve_it_is_never_mixed(site):
    publish(site, np.full(SHAPE, 0.0))
    host = site.sub.address
    read(host, "data/a.b2nd", ":,:", SHAPE)  # (cached: fronts can answer)
    stop = threading.Event()
    seen: list[float] = []
    errors: list[str] = []

    def client() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not stop.is_set() and time.monotonic() < deadline:
            r = httpx.get(f"http://{host}/api/fetch/data/a.b2nd",
                          params={"slice_": ":,:", "buffer": "true"},
                          headers={"Connection": "close"}, timeout=30)
            if r.status_code != 200:  # (409/503 while it keeps changing: read again)
                continue
            out = wire.decompress_items(r.content, np.dtype("f8"), SHAPE)
            values = np.unique(out)
            if len(values) != 1:
                errors.append(f"one answer mixes versions {values.tolist()}")
            seen.append(float(values[0]))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for version in range(1, 6):
            publish(site, np.full(SHAPE, float(version)))
            wait_until(lambda v=version: read(host, "data/a.b2nd", "0:1,0:1", (1, 1))[0, 0] == v,
                       timeout=DEADLINE_S, what=f"version {version} served")
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE_S)
    assert not errors, errors[:3]
    assert seen and set(seen) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    for _ in range(10):  # once the last version is served, only it is, by every worker
        assert np.all(read(host, "data/a.b2nd", ":,:", SHAPE) == 5.0)


def test_stopping_stops_every_worker_and_a_dead_front_is_replaced(site):
    publish(site, np.arange(SHAPE[0] * SHAPE[1], dtype="f8").reshape(SHAPE))
    host, owner = site.sub.address, site.sub.proc.pid
    [front] = workers_of(owner)
    os.kill(front, signal.SIGKILL)
    wait_until(lambda: [p for p in workers_of(owner) if p != front and alive(p)],
               timeout=DEADLINE_S, what="a new front")
    for _ in range(10):
        assert read(host, "data/a.b2nd", "0:2,0:2", (2, 2))[1, 1] == SHAPE[1] + 1
    [new_front] = [p for p in workers_of(owner) if alive(p)]
    site.sub.stop()
    wait_until(lambda: not alive(new_front), timeout=DEADLINE_S, what="the front stopped")
    assert "starting it again" in site.sub.log_tail(200)


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_workers_must_be_a_whole_number_of_at_least_one(tmp_path, value):
    done = subprocess.run([sys.executable, "-m", "caterva2.services.subscriber",
                           "--http", "127.0.0.1:0", "--statedir", str(tmp_path / "s"),
                           "--broker", "127.0.0.1:9", "--workers", value],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().endswith(
        f"error: workers must be a whole number of processes, at least 1 (got '{value}')"), \
        done.stderr


def test_workers_in_the_configuration_file_is_checked_too(tmp_path):
    (tmp_path / "caterva2.toml").write_text("[subscriber]\nworkers = 0\n")
    done = subprocess.run([sys.executable, "-m", "caterva2.services.subscriber",
                           "--http", "127.0.0.1:0", "--statedir", str(tmp_path / "s"),
                           "--broker", "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert "workers must be a whole number of processes, at least 1 (got 0)" in done.stderr


def front_answers(base: str, **options) -> float:
    """Requests the fronts answered themselves, as the owner's figures say (``options``:
    for httpx)."""
    text = httpx.get(f"{base}/metrics", timeout=30, **options).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("caterva2_front_answers_total"))


def test_every_worker_applies_the_same_logins_and_rules(stack, tmp_path):
    from caterva2.tests.harness import cat2admin
    from caterva2.tools import make_root_example

    stack.publisher("foo", make_root_example.make(tmp_path / "root-example"))
    conf = tmp_path / "caterva2.toml"
    conf.write_text('[access.foo]\nread = ["alice"]\n')
    sub = stack.subscriber(args=["--workers", "2", "--require-login", "--conf", conf])
    alice, bob = ({"Authorization": "Bearer " + cat2admin(
        "--statedir", sub.statedir, "adduser", name).stdout.split()[-1]}
        for name in ("alice", "bob"))
    base = f"http://{sub.address}"
    wait_until(lambda: httpx.post(f"{base}/api/subscribe/foo", headers=alice).status_code
               == 200, what="foo subscribed")
    expected = np.arange(200, dtype="uint16").reshape(10, 20)[2:7, 3:9]
    url = f"{base}/api/fetch/foo/dir1/ds-2d.b2nd"
    params = {"slice_": "2:7,3:9", "buffer": "true"}
    assert httpx.get(url, params=params, headers=alice).status_code == 200  # (now cached)
    time.sleep(1)  # (the fronts know foo is subscribed)
    answered = front_answers(base, headers=alice)
    for _ in range(16):  # (a new connection each: both workers get some)
        for headers, status in [({}, 401), (bob, 403), (alice, 200)]:
            r = httpx.get(url, params=params, headers={**headers, "Connection": "close"})
            assert r.status_code == status, (headers, r.text)
        np.testing.assert_array_equal(
            wire.decompress_items(r.content, np.dtype("uint16"), expected.shape), expected)
        for path, expected_bytes in [("ds-hello.b2frame", b"Hello world!" * 100),
                                     ("README.md", README)]:  # (bytes: frames, files)
            r = httpx.get(f"{base}/api/fetch/foo/{path}",
                          headers={**alice, "Connection": "close"})
            assert r.status_code == 200, r.text
            assert wire.decode_selection(r.content, is_array=False) == expected_bytes
        r = httpx.get(f"{base}/api/fetch/foo/ds-sc-attr.b2nd",  # (a 0-d array)
                      headers={**alice, "Connection": "close"})
        assert wire.decode_selection(r.content, is_array=True) == "foobar"
        for path in ["/api/list/foo", "/api/info/foo/dir1/ds-2d.b2nd"]:
            assert httpx.get(base + path, headers={**bob, "Connection": "close"}
                             ).status_code == 403
            assert httpx.get(base + path, headers={**alice, "Connection": "close"}
                             ).status_code == 200
    wait_until(lambda: front_answers(base, headers=alice) > answered, timeout=5,
               what="answers from the front")


def test_workers_over_tls(pki, tmp_path, monkeypatch):  # noqa: F811 - the fixture
    from caterva2.tests.harness import Stack
    from caterva2.tools import make_root_example

    listen = ["--certfile", pki["cert"], "--keyfile", pki["key"]]
    monkeypatch.setenv("CATERVA2_CA_BUNDLE", pki["ca"])
    stack = Stack(tmp_path / "state")
    try:
        stack.publisher("foo", make_root_example.make(tmp_path / "root-example"))
        sub = stack.subscriber(args=[*listen, "--workers", "2"])
        assert sub.address.startswith("https://")
        trust = ssl.create_default_context(cafile=pki["ca"])
        with httpx.Client(verify=trust) as client:
            wait_until(lambda: client.post(f"{sub.address}/api/subscribe/foo").status_code
                       == 200, what="foo subscribed")
        url = f"{sub.address}/api/fetch/foo/dir1/ds-2d.b2nd"
        params = {"slice_": "2:7,3:9", "buffer": "true"}
        expected = np.arange(200, dtype="uint16").reshape(10, 20)[2:7, 3:9]
        assert httpx.get(url, params=params, verify=trust).status_code == 200
        time.sleep(1)  # (the front knows foo is subscribed)
        answered = front_answers(sub.address, verify=trust)

        def read_over_tls() -> bool:  # (a new connection each: either worker takes it)
            r = httpx.get(url, params=params, verify=trust)
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(
                wire.decompress_items(r.content, np.dtype("uint16"), expected.shape),
                expected)
            return front_answers(sub.address, verify=trust) > answered

        wait_until(read_over_tls, timeout=DEADLINE_S, what="answers from the front")
    finally:
        stack.stop()


def open_deleted_files(pid: int) -> list[str]:
    """Files process ``pid`` holds open that were removed."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith(" (deleted)") and "/cache/" in target:
            found.append(target)
    return found


def test_the_cache_bound_holds_for_all_workers(stack, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    rng = np.random.default_rng(3)
    data = {}
    for name in "abcd":  # 1 MiB each, incompressible, in chunks of 256 KiB
        data[name] = rng.normal(size=2**17)
        blosc2.asarray(data[name], urlpath=str(src / f"{name}.b2nd"), mode="w",
                       chunks=(2**15,), blocks=(2**12,))
    stack.publisher("big", src)
    sub = stack.subscriber(args=["--workers", "2", "--cache-size", "3MiB"])
    wait_until(lambda: "big" in cat2.get_roots(sub.address), what="root big")
    assert cat2.subscribe("big", sub.address) == "Ok"
    [front] = workers_of(sub.proc.pid)
    for round_ in range(3):
        for name in "abcd":  # (the fronts answer what is cached, the owner the rest)
            for _ in range(4):
                out = read(sub.address, f"big/{name}.b2nd", ":", (2**17,))
                np.testing.assert_array_equal(out, data[name])
    figures = httpx.get(f"http://{sub.address}/api/cache").json()
    assert figures["evictions"] > 0 and figures["usage"] <= 3 * 2**20, figures
    # Replicas the owner evicted are let go by the front too, within a second or so.
    wait_until(lambda: not open_deleted_files(front), timeout=10,
               what="the front to close evicted replicas")


def test_fronts_stop_when_the_owner_is_killed_and_everything_else_passes_through(site):
    data = np.random.default_rng(5).normal(size=SHAPE)
    publish(site, data)
    host = site.sub.address
    ds = cat2.Root("data", host=host)["a.b2nd"]
    for _ in range(4):  # chunk streams, downloads, roots: the owner's, through any worker
        np.testing.assert_array_equal(ds[:], data)
        np.testing.assert_array_equal(ds[100:300, 50:60], data[100:300, 50:60])
        assert "data" in cat2.get_roots(host)
        r = httpx.get(f"http://{host}/files/data/a.b2nd", headers={"Range": "bytes=0-99",
                                                                   "Connection": "close"})
        assert r.status_code == 206 and len(r.content) == 100
    [front] = workers_of(site.sub.proc.pid)
    site.sub.stop(kill=True)
    wait_until(lambda: not alive(front), timeout=DEADLINE_S, what="the front to stop")


def test_a_chunk_damaged_on_disk_is_never_served_by_any_worker(site):
    data = np.random.default_rng(7).normal(size=SHAPE)
    publish(site, data)
    host = site.sub.address
    np.testing.assert_array_equal(read(host, "data/a.b2nd", ":,:", SHAPE), data)  # cached
    [replica] = site.sub.statedir.glob("cache/roots/data/data/a.b2nd/*/replica.b2")
    cached = blosc2.open(str(replica))
    chunk = cached.schunk.get_chunk(5)
    del cached
    content = bytearray(replica.read_bytes())
    at = content.find(chunk) + len(chunk) // 2
    assert at > len(chunk) // 2, "chunk 5 not found in the replica"
    content[at] ^= 0xFF
    replica.write_bytes(bytes(content))  # (as a failing disk might)
    for _ in range(20):  # (a new connection each: both workers get some)
        np.testing.assert_array_equal(read(host, "data/a.b2nd", "100:200,100:200",
                                           (100, 100)), data[100:200, 100:200])
    assert site.cache()["digest_mismatches"] >= 1


def test_fronts_that_keep_dying_stop_the_subscriber_saying_why(stack):
    sub = stack.subscriber(args=["--workers", "2"])
    owner = sub.proc.pid
    for _ in range(6):  # (the sixth death within a minute is one too many)
        if sub.proc.poll() is not None:
            break
        fronts = wait_until(lambda: [p for p in workers_of(owner) if alive(p)],
                            timeout=DEADLINE_S, what="a front")
        os.kill(fronts[0], signal.SIGKILL)
        wait_until(lambda f=fronts[0]: not alive(f), timeout=DEADLINE_S, what="it died")
    assert sub.proc.wait(DEADLINE_S) != 0  # (ended by its own SIGTERM: status 143 in a shell)
    assert "fronts ended 5 times within 60 s: stopping the subscriber" in sub.log_tail(100)
