"""Faults caused for real, and what users see then: publishers killed or replaced,
subscribers and brokers stopped or restarted, a subscriber's disk full, its cache damaged
while running or by a crash; and the checks that keep a chunk stream cut short from passing
for data.
"""
import asyncio
import dataclasses
import pathlib
import re

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2 import wire
from caterva2.assembly import ChunkAssembler
from caterva2.models import PUBLISHER_KEY_HEADER
from caterva2.tests.harness import (
    CountingProxy,
    PublishedRoot,
    Service,
    cat2admin,
    closed_port_address,
    wait_until,
)


@pytest.fixture
def data_root(stack, tmp_path) -> PublishedRoot:
    """Root ``data`` holding ``cached.b2nd``, read once (so cached at the subscriber), and
    ``uncached.b2nd``, never read: 1000 int64 each, in chunks of 100."""
    src = tmp_path / "data"
    src.mkdir()
    for name in ("cached.b2nd", "uncached.b2nd"):
        blosc2.asarray(np.arange(1000), urlpath=str(src / name), mode="w", chunks=(100,),
                       blocks=(10,))
    data = stack.publish_root("data", src)
    np.testing.assert_array_equal(cat2.Root("data", host=data.host)["cached.b2nd"][:],
                                  np.arange(1000))
    return data


def test_killed_publisher_cached_served_uncached_503_then_resumes(data_root):
    pub, host = data_root.publisher, data_root.host
    pub.stop(kill=True)
    np.testing.assert_array_equal(cat2.fetch("data/cached.b2nd", host, "10:20"),
                                  np.arange(10, 20))
    assert cat2.get_info("data/uncached.b2nd", host)["shape"] == [1000]  # metadata too
    with pytest.raises(cat2.ServerError) as err:
        cat2.fetch("data/uncached.b2nd", host, "0:5")
    assert err.value.status_code in (503, 504), err.value.detail
    assert "unreachable" in err.value.detail
    pub.start()
    wait_until(lambda: cat2.fetch("data/uncached.b2nd", host, "0:5").tolist() == [0, 1, 2, 3, 4],
               what="service resumed after publisher restart")


def test_change_announced_by_a_publisher_that_then_died(data_root, stack):
    """A change event reaches the subscriber after its publisher died: the old cached data is
    not served as current, the dataset stays listed with the reason, and the publisher's
    return brings the dataset back."""
    pub, host = data_root.publisher, data_root.host
    pub.stop(kill=True)
    httpx.post(f"http://{stack.broker.address}/api/events", json={
        "root": "data", "changed": {"cached.b2nd": "a-version-never-seen"}, "deleted": [],
    }, headers={PUBLISHER_KEY_HEADER: pub.key}  # (its own key: only it may announce)
    ).raise_for_status()  # what the publisher would have announced just before dying

    def refused() -> cat2.ServerError | None:
        try:
            cat2.fetch("data/cached.b2nd", host, "0:5")
        except cat2.ServerError as e:
            return e
        return None

    error = wait_until(refused, what="the change at the subscriber")
    assert error.status_code == 503 and "unreachable" in error.detail, error.detail
    assert "cached.b2nd" in cat2.get_list("data", host), "the changed dataset left the listing"
    pub.start()
    wait_until(lambda: refused() is None, what="the dataset readable again")
    np.testing.assert_array_equal(cat2.fetch("data/cached.b2nd", host), np.arange(1000))


def test_second_publisher_of_a_root_name_waits_for_its_release(data_root, stack, tmp_path):
    """A root name belongs to the publisher that registered it first: a second one of the
    same name is refused and says so in its log, also once the first has stopped; released
    by the broker's operator, the name goes to the second (which keeps asking)."""
    first, sub = data_root.publisher, data_root.subscriber
    other = tmp_path / "other"
    other.mkdir()
    blosc2.asarray(np.arange(7), urlpath=str(other / "other.b2nd"), mode="w")
    second = stack.publisher("data", other, id_="second")
    wait_until(lambda: "belongs to another publisher" in second.log_tail(50),
               what="the second publisher's refusal in its log")
    broker = f"http://{stack.broker.address}/api/roots"
    assert httpx.get(broker).json()["data"]["http"] == first.address
    assert cat2.get_list("data", sub.address) == ["cached.b2nd", "uncached.b2nd"]
    first.stop()
    refusals = second.log_tail(1000).count("belongs to another publisher")
    wait_until(lambda: second.log_tail(1000).count("belongs to another publisher") > refusals,
               what="the second publisher refused again, the first one down")
    assert httpx.get(broker).json()["data"]["http"] == first.address
    done = cat2admin("--statedir", stack.broker.statedir, "release", "data")
    assert done.returncode == 0 and "released root name 'data'" in done.stdout, done.stderr
    wait_until(lambda: cat2.get_list("data", sub.address) == ["other.b2nd"], timeout=30,
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
    assert err.value.status_code in (503, 504), err.value.detail
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
    assert "cannot write to its disk" in log, "the subscriber's log does not say why"
    assert "Traceback" not in log, log


def test_a_chunk_stream_lacking_chunks_is_an_error_not_data():
    shape, chunks, blocks = (40,), (10,), (5,)
    arr = blosc2.asarray(np.arange(40), chunks=chunks, blocks=blocks)
    asm = ChunkAssembler(shape, chunks, blocks, np.dtype(int), (slice(0, 40),))
    for n in (0, 1, 3):
        asm.add(n, arr.schunk.get_chunk(n))
    with pytest.raises(ValueError, match="lacks 1 of 4 chunks"):
        asm.check_complete([0, 1, 2, 3])


def test_publisher_announces_changes_made_while_it_was_down(data_root):
    pub, src = data_root.publisher, data_root.source
    pub.stop()
    blosc2.asarray(np.arange(1000) * 2, urlpath=str(src / "cached.b2nd"), mode="w",
                   chunks=(100,), blocks=(10,))
    (src / "uncached.b2nd").unlink()
    pub.start()
    host = data_root.host
    wait_until(lambda: cat2.get_list("data", host) == ["cached.b2nd"], what="deletion seen")
    np.testing.assert_array_equal(cat2.fetch("data/cached.b2nd", host, "0:3"), [0, 2, 4])


def test_restarted_subscriber_keeps_subscriptions_and_cache(data_root):
    data_root.subscriber.stop()
    data_root.publisher.stop()  # only the cache can answer now
    data_root.subscriber.start()
    host = data_root.host
    roots = cat2.get_roots(host)
    assert roots["data"]["subscribed"], roots
    np.testing.assert_array_equal(cat2.fetch("data/cached.b2nd", host, "::100"),
                                  np.arange(0, 1000, 100))


def test_restarted_broker_notifications_resume(data_root, stack):
    stack.broker.restart()
    blosc2.asarray(np.arange(1000) + 5, urlpath=str(data_root.source / "cached.b2nd"), mode="w",
                   chunks=(100,), blocks=(10,))
    wait_until(lambda: cat2.fetch("data/cached.b2nd", data_root.host, "0:1")[0] == 5, timeout=30,
               what="change seen through the restarted broker")


def test_roots_published_while_subscriber_down_appear(data_root, stack, tmp_path):
    sub = data_root.subscriber
    sub.stop()
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    stack.publisher("other", other)
    sub.start()
    wait_until(lambda: "other" in cat2.get_roots(sub.address), what="new root")


# A damaged cache: the data of a dataset fetched through a CountingProxy, so that a test can
# show its chunks came again from the publisher.
DAMAGEABLE = np.random.default_rng(5).normal(size=1000)  # 10 chunks of 800 B, incompressible


@dataclasses.dataclass(frozen=True)
class CountedRoot:
    """Root ``counted``, subscribed, whose ``a.b2nd`` (``DAMAGEABLE``) was read once: every
    byte the subscriber fetched for it crossed ``link``."""

    subscriber: Service
    link: CountingProxy  # between the subscriber and the publisher
    chunk_sizes: list[int]  # of a.b2nd's chunks, as stored at the source

    @property
    def host(self) -> str:
        return self.subscriber.address

    def replica(self) -> pathlib.Path:
        """The subscriber's cached copy of ``a.b2nd``."""
        [replica] = pathlib.Path(self.subscriber.statedir, "cache").rglob("replica.b2")
        return replica


@pytest.fixture
def counted(stack, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    stored = blosc2.asarray(DAMAGEABLE, urlpath=str(src / "a.b2nd"), mode="w", chunks=(100,),
                            blocks=(10,))
    link = stack.count_link(stack.publisher("data", src), "counted")
    try:
        sub = stack.subscriber()
        wait_until(lambda: "counted" in cat2.get_roots(sub.address), what="root counted")
        assert cat2.subscribe("counted", sub.address) == "Ok"
        np.testing.assert_array_equal(cat2.fetch("counted/a.b2nd", sub.address), DAMAGEABLE)
        yield CountedRoot(sub, link, [len(stored.schunk.get_chunk(n))
                                      for n in range(stored.schunk.nchunks)])
    finally:
        link.close()


def cut_after_header(frame: pathlib.Path) -> None:
    """Cut a Blosc2 frame file right after its header: every chunk it held is gone.  (The
    header's length is at bytes 11-14, big-endian, in Blosc2's contiguous frame format.)"""
    with open(frame, "r+b") as f:
        f.truncate(int.from_bytes(f.read(15)[11:15], "big"))


def test_chunks_damaged_under_a_running_subscriber_are_fetched_again(counted):
    """A cached copy damaged while the subscriber has it open (here: every chunk cut off, as
    a full disk or another program could leave it): the next read finds each damaged chunk,
    fetches it again from the publisher and answers with the right data, not an error."""
    replica = counted.replica()
    cut_after_header(replica)
    before = counted.link.counters()
    np.testing.assert_array_equal(cat2.fetch("counted/a.b2nd", counted.host, ":"), DAMAGEABLE)
    log = counted.subscriber.log_tail(10_000)
    damaged = {int(n) for n in re.findall(r"chunk (\d+) of \S+ is damaged", log)}
    assert damaged == set(range(len(counted.chunk_sizes))), \
        f"the subscriber's log names damaged chunks {sorted(damaged)}, not all of them"
    refetched = counted.link.counters().down - before.down
    assert refetched >= sum(counted.chunk_sizes), \
        f"{refetched} bytes came from the publisher, less than the {sum(counted.chunk_sizes)} " \
        "of the damaged chunks"
    # Whole again: reading it all needs nothing more from the publisher.
    after = counted.link.counters()
    np.testing.assert_array_equal(cat2.fetch("counted/a.b2nd", counted.host), DAMAGEABLE)
    assert counted.link.counters().down == after.down, "a read of the repaired copy was fetched"


def test_cached_copy_left_unreadable_by_a_crash_is_discarded_and_rebuilt(counted):
    """A subscriber killed while writing its cache can leave a replica file cut short (here:
    cut in half, its trailer lost).  Restarted, it finds the file unreadable, says so in its
    log, and rebuilds it from the publisher: the user gets the right data, not an error."""
    replica = counted.replica()
    counted.subscriber.stop(kill=True)
    with open(replica, "r+b") as f:
        f.truncate(replica.stat().st_size // 2)
    counted.subscriber.start()
    before = counted.link.counters()
    np.testing.assert_array_equal(cat2.fetch("counted/a.b2nd", counted.host, ":"), DAMAGEABLE)
    assert f"discarding unreadable replica {replica}" in counted.subscriber.log_tail(10_000), \
        "the subscriber's log does not say it discarded the damaged copy"
    refetched = counted.link.counters().down - before.down
    assert refetched >= sum(counted.chunk_sizes), \
        f"{refetched} bytes came from the publisher, less than the {sum(counted.chunk_sizes)} " \
        "of the dataset's chunks"


def test_two_publishers_two_subscribers(stack, tmp_path):
    """Each of two subscribers follows the roots of two publishers, and reads both."""
    for name, value in (("one", 30), ("two", 31)):
        d = tmp_path / name
        d.mkdir()
        blosc2.asarray(np.full(50, value), urlpath=str(d / "v.b2nd"), mode="w")
        stack.publisher(name, d)
    for sub in (stack.subscriber("sub1"), stack.subscriber("sub2")):
        host = sub.address
        wait_until(lambda: {"one", "two"} <= set(cat2.get_roots(host)),
                   what=f"both roots at {sub.statedir.name}")
        assert cat2.subscribe("one", host) == "Ok"
        assert cat2.subscribe("two", host) == "Ok"
        assert cat2.fetch("one/v.b2nd", host, "0") == 30
        assert cat2.fetch("two/v.b2nd", host, "0") == 31
        roots = cat2.get_roots(host)
        assert roots["one"]["subscribed"] and roots["two"]["subscribed"], roots


def test_subscriber_without_its_broker_says_so(stack):
    stack.broker.stop()
    sub = stack.subscriber()  # starts, and keeps trying to reach the broker
    for call in (lambda: cat2.get_roots(sub.address), lambda: cat2.subscribe("foo", sub.address)):
        with pytest.raises(cat2.ServerError) as err:
            call()
        assert err.value.status_code == 503 and "broker" in err.value.detail, err.value.detail
        assert "unreachable" in err.value.detail


def test_stopped_subscriber_gives_a_clear_error():
    with closed_port_address() as address, pytest.raises(httpx.ConnectError):
        cat2.get_roots(address)


def test_a_chunk_stream_never_sends_more_than_its_announced_length():
    # A publisher announces a Content-Length from the chunk sizes, then reads the chunks; if
    # the file was rewritten in between, a chunk of another size must end the stream before
    # any of it is sent (uvicorn would fail with "longer than Content-Length").

    chunks = {0: b"a" * 10, 1: b"b" * 12, 2: b"c" * 7}

    async def send(sizes, sent):
        async for piece in wire.write_records(lambda batch: [chunks[n] for n in batch],
                                                [[0, 1], [2]], sizes=sizes):
            sent.append(piece)

    def record(n):
        return wire.record(n, chunks[n])

    sent = []
    asyncio.run(send({0: 10, 1: 12, 2: 7}, sent))
    assert b"".join(sent) == record(0) + record(1) + record(2)
    sent = []
    with pytest.raises(wire.ChunkChanged, match="chunk 1 is 12 bytes, not the 9 announced"):
        asyncio.run(send({0: 10, 1: 9, 2: 7}, sent))
    assert b"".join(sent) == record(0)
