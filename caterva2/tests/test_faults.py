"""Faults caused for real: publishers killed, subscribers and brokers restarted, cache damaged."""
import asyncio
import pathlib

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2 import b2
from caterva2.tests.harness import wait_until


@pytest.fixture
def deployment(stack, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    for name in ("cached.b2nd", "uncached.b2nd"):
        blosc2.asarray(np.arange(1000), urlpath=str(src / name), mode="w", chunks=(100,),
                       blocks=(10,))
    pub = stack.publisher("data", src)
    sub = stack.subscriber()
    wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data")
    root = cat2.Root("data", host=sub.address)
    root["cached.b2nd"][:]
    return stack, pub, sub, src


def test_killed_publisher_cached_served_uncached_503_then_resumes(deployment):
    stack, pub, sub, src = deployment
    pub.stop(kill=True)
    host = sub.address
    np.testing.assert_array_equal(cat2.fetch("data/cached.b2nd", host, "10:20"),
                                  np.arange(10, 20))
    assert cat2.get_info("data/uncached.b2nd", host)["shape"] == [1000]  # metadata too
    with pytest.raises(cat2.ServerError) as err:
        cat2.fetch("data/uncached.b2nd", host, "0:5")
    assert err.value.status_code in (503, 504)
    assert "unreachable" in err.value.detail
    pub.start()
    wait_until(lambda: cat2.fetch("data/uncached.b2nd", host, "0:5").tolist() == [0, 1, 2, 3, 4],
               what="service resumed after publisher restart")


def test_change_announced_by_a_publisher_that_then_died(deployment):
    """A change event reaches the subscriber after its publisher died: the old cached data is
    not served as current, the dataset stays listed with the reason, and the publisher's
    return brings the dataset back."""
    stack, pub, sub, _src = deployment
    host = sub.address
    pub.stop(kill=True)
    httpx.post(f"http://{stack.broker.address}/api/events", json={
        "root": "data", "changed": {"cached.b2nd": "a-version-never-seen"}, "deleted": [],
    }).raise_for_status()  # what the publisher would have announced just before dying

    def refused() -> cat2.ServerError | None:
        try:
            cat2.fetch("data/cached.b2nd", host, "0:5")
        except cat2.ServerError as e:
            return e
        return None

    error = wait_until(refused, what="the change at the subscriber")
    assert error.status_code == 503 and "unreachable" in error.detail, error.detail
    assert "cached.b2nd" in cat2.get_list("data", host)
    pub.start()
    wait_until(lambda: refused() is None, what="the dataset readable again")
    np.testing.assert_array_equal(cat2.fetch("data/cached.b2nd", host), np.arange(1000))


def test_second_publisher_of_a_root_name_waits_for_the_first_to_stop(deployment, tmp_path):
    """A root name belongs to one publisher: a second one of the same name is refused, says
    so in its log, and takes the name over when the first stops serving it."""
    stack, first, sub, _src = deployment
    other = tmp_path / "other"
    other.mkdir()
    blosc2.asarray(np.arange(7), urlpath=str(other / "other.b2nd"), mode="w")
    second = stack.publisher("data", other, id_="second")
    wait_until(lambda: "already published at" in second.log_tail(50),
               what="the second publisher's refusal in its log")
    broker = f"http://{stack.broker.address}/api/roots"
    assert httpx.get(broker).json()["data"]["http"] == first.address
    assert cat2.get_list("data", sub.address) == ["cached.b2nd", "uncached.b2nd"]
    first.stop()
    wait_until(lambda: cat2.get_list("data", sub.address) == ["other.b2nd"],
               what="the second publisher's datasets at the subscriber")
    assert httpx.get(broker).json()["data"]["http"] == second.address
    np.testing.assert_array_equal(cat2.fetch("data/other.b2nd", sub.address), np.arange(7))


def test_killed_publisher_large_streamed_reads(stack, tmp_path):
    """Large selections travel as chunk streams: the cached part is still served whole, and
    a read needing chunks the dead publisher cannot give fails clearly, never partially."""
    src = tmp_path / "big"
    src.mkdir()
    a = np.arange(400_000, dtype="f8").reshape(400, 1000)
    blosc2.asarray(a, urlpath=str(src / "a.b2nd"), mode="w", chunks=(100, 1000),
                   blocks=(10, 1000))
    pub = stack.publisher("big", src)
    sub = stack.subscriber()
    wait_until(lambda: "big" in cat2.get_roots(sub.address), what="root big")
    ds = cat2.Root("big", host=sub.address)["a.b2nd"]
    np.testing.assert_array_equal(ds[:200], a[:200])  # 1.6 MB: a chunk stream
    pub.stop(kill=True)
    np.testing.assert_array_equal(ds[:200], a[:200])
    with pytest.raises(cat2.ServerError) as err:
        ds[:]
    assert err.value.status_code in (503, 504)
    assert "unreachable" in err.value.detail


def test_subscriber_that_cannot_write_its_cache_says_why_and_loses_nothing(stack, tmp_path):
    """A subscriber whose disk is full (here: a file size limit on its process) answers
    reads that need new chunks with the reason: a 507, or a chunk stream ended by an error
    record when the answer had started.  Never a 500, a traceback, or a guess ("its
    publisher may be down").  Once it can write again, reads are whole and correct."""
    resource = pytest.importorskip("resource")
    src = tmp_path / "big"
    src.mkdir()
    a = np.random.default_rng(0).normal(size=(400, 1000))  # 8 chunks of 400 kB, incompressible
    blosc2.asarray(a, urlpath=str(src / "a.b2nd"), mode="w", chunks=(50, 1000),
                   blocks=(10, 1000))
    stack.publisher("big", src)
    sub = stack.subscriber()
    wait_until(lambda: "big" in cat2.get_roots(sub.address), what="root big")
    ds = cat2.Root("big", host=sub.address)["a.b2nd"]
    limit = 1_000_000  # a replica fails on its third chunk: the answer has started by then
    resource.prlimit(sub.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    with pytest.raises((cat2.AnswerCut, cat2.ServerError), match="cannot write to its disk"):
        ds[:]
    with pytest.raises(cat2.ServerError, match="cannot write to its disk") as err:
        ds.download(tmp_path / "dl")
    assert err.value.status_code == 507
    np.testing.assert_array_equal(ds[100:110, 5], a[100:110, 5])  # one chunk still fits
    resource.prlimit(sub.proc.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    np.testing.assert_array_equal(ds[:], a)
    np.testing.assert_array_equal(blosc2.open(str(ds.download(tmp_path / "dl")))[:], a)
    log = sub.log_tail(10_000)
    assert "cannot write to its disk" in log and "Traceback" not in log


def test_a_chunk_stream_lacking_chunks_is_an_error_not_data():
    shape, chunks, blocks = (40,), (10,), (5,)
    arr = blosc2.asarray(np.arange(40), chunks=chunks, blocks=blocks)
    asm = b2.ChunkAssembler(shape, chunks, blocks, np.dtype(int), (slice(0, 40),))
    for n in (0, 1, 3):
        asm.add(n, arr.schunk.get_chunk(n))
    with pytest.raises(ValueError, match="lacks 1 of 4 chunks"):
        asm.check_complete([0, 1, 2, 3])


def test_publisher_announces_changes_made_while_it_was_down(deployment):
    stack, pub, sub, src = deployment
    pub.stop()
    blosc2.asarray(np.arange(1000) * 2, urlpath=str(src / "cached.b2nd"), mode="w",
                   chunks=(100,), blocks=(10,))
    (src / "uncached.b2nd").unlink()
    pub.start()
    host = sub.address
    wait_until(lambda: cat2.get_list("data", host) == ["cached.b2nd"], what="deletion seen")
    np.testing.assert_array_equal(cat2.fetch("data/cached.b2nd", host, "0:3"), [0, 2, 4])


def test_restarted_subscriber_keeps_subscriptions_and_cache(deployment):
    stack, pub, sub, src = deployment
    sub.stop()
    pub.stop()  # only the cache can answer now
    sub.start()
    host = sub.address
    assert cat2.get_roots(host)["data"]["subscribed"]
    np.testing.assert_array_equal(cat2.fetch("data/cached.b2nd", host, "::100"),
                                  np.arange(0, 1000, 100))


def test_restarted_broker_notifications_resume(deployment):
    stack, pub, sub, src = deployment
    stack.broker.restart()
    blosc2.asarray(np.arange(1000) + 5, urlpath=str(src / "cached.b2nd"), mode="w",
                   chunks=(100,), blocks=(10,))
    wait_until(lambda: cat2.fetch("data/cached.b2nd", sub.address, "0:1")[0] == 5, timeout=30,
               what="change seen through the restarted broker")


def test_roots_published_while_subscriber_down_appear(deployment, tmp_path):
    stack, pub, sub, src = deployment
    sub.stop()
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    stack.publisher("other", other)
    sub.start()
    wait_until(lambda: "other" in cat2.get_roots(sub.address), what="new root")


def test_damaged_cache_is_detected_and_rebuilt(deployment):
    stack, pub, sub, src = deployment
    replicas = sorted(pathlib.Path(sub.statedir, "cache").rglob("replica.b2"))
    assert replicas, "expected cached replicas"
    for f in replicas:
        f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])  # as after a crash or a full disk
    host = sub.address
    for _ in range(3):  # damage is reported as an error (never as data) and then healed
        try:
            got = cat2.fetch("data/cached.b2nd", host, ":")
            break
        except cat2.ServerError as e:
            assert e.status_code == 503
    np.testing.assert_array_equal(got, np.arange(1000))


def test_two_publishers_two_subscribers(stack, tmp_path):
    for name in ("one", "two"):
        d = tmp_path / name
        d.mkdir()
        blosc2.asarray(np.full(50, len(name) * 10 + (name == "two")), urlpath=str(d / "v.b2nd"),
                       mode="w")
        stack.publisher(name, d)
    subs = [stack.subscriber("sub1"), stack.subscriber("sub2")]
    for s in subs:
        wait_until(lambda: {"one", "two"} <= set(cat2.get_roots(s.address)), what="both roots")
        assert cat2.fetch("one/v.b2nd", s.address, "0") if cat2.subscribe("one", s.address) else 0
        cat2.subscribe("two", s.address)
        assert cat2.fetch("one/v.b2nd", s.address, "0") == 30
        assert cat2.fetch("two/v.b2nd", s.address, "0") == 31
    assert cat2.get_roots(subs[0].address)["one"]["subscribed"]


def test_subscriber_without_its_broker_says_so(stack):
    stack.broker.stop()
    sub = stack.subscriber()  # starts, and keeps trying to reach the broker
    for call in (lambda: cat2.get_roots(sub.address), lambda: cat2.subscribe("foo", sub.address)):
        with pytest.raises(cat2.ServerError) as err:
            call()
        assert err.value.status_code == 503 and "broker" in err.value.detail
        assert "unreachable" in err.value.detail


def test_stopped_subscriber_gives_a_clear_error(tmp_path):
    with pytest.raises(httpx.ConnectError):
        cat2.get_roots("127.0.0.1:9")  # nothing listens on the discard port


def test_a_chunk_stream_never_sends_more_than_its_announced_length():
    # A publisher announces a Content-Length from the chunk sizes, then reads the chunks; if
    # the file was rewritten in between, a chunk of another size must end the stream before
    # any of it is sent (uvicorn would fail with "longer than Content-Length").
    from caterva2.services import common

    chunks = {0: b"a" * 10, 1: b"b" * 12, 2: b"c" * 7}

    async def send(sizes, sent):
        async for piece in common.chunk_records(lambda batch: [chunks[n] for n in batch],
                                                [[0, 1], [2]], sizes=sizes):
            sent.append(piece)

    def record(n):
        return b2.record_header(n, len(chunks[n])) + chunks[n]

    sent = []
    asyncio.run(send({0: 10, 1: 12, 2: 7}, sent))
    assert b"".join(sent) == record(0) + record(1) + record(2)
    sent = []
    with pytest.raises(common.ChunkChanged, match="chunk 1 is 12 bytes, not the 9 announced"):
        asyncio.run(send({0: 10, 1: 9, 2: 7}, sent))
    assert b"".join(sent) == record(0)
