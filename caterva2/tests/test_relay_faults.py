"""Re-publishing under faults, caused for real: the origin down, a relay down, pieces of
the chain restarted (origin → A → B → C, see :mod:`caterva2.tests.relay_chain`)."""
from __future__ import annotations

import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.tests.harness import cat2admin, wait_until
from caterva2.tests.relay_chain import Chain, big_array


@pytest.fixture
def chain(tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    datasets = {name: big_array(source, name, seed=n)
                for n, name in enumerate(["one.b2nd", "two.b2nd", "three.b2nd"])}
    c = Chain(tmp_path / "state", source)
    c.data = datasets
    try:
        yield c
    finally:
        c.stop()


def read(host: str, root: str, name: str) -> np.ndarray:
    return cat2.Root(root, host=host)[name][:]


def refused(host: str, root: str, name: str) -> cat2.ServerError:
    with pytest.raises(cat2.ServerError) as info:
        read(host, root, name)
    return info.value


def test_origin_down_every_site_serves_what_any_site_upstream_cached(chain):
    cat2.subscribe("data", chain.subs["A"].address)
    np.testing.assert_array_equal(read(chain.subs["A"].address, "data", "one.b2nd"),
                                  chain.data["one.b2nd"])  # cached at site A only
    np.testing.assert_array_equal(read(chain.subs["B"].address, "adata", "two.b2nd"),
                                  chain.data["two.b2nd"])  # cached at A and B
    chain.pubs["O"].stop(kill=True)

    for name in ("one.b2nd", "two.b2nd"):
        np.testing.assert_array_equal(read(chain.host, "bdata", name), chain.data[name])
    error = refused(chain.host, "bdata", "three.b2nd")  # cached nowhere
    assert error.response.status_code in (502, 503, 504), error
    assert "unreachable" in str(error) or "answered" in str(error), error

    chain.pubs["O"].start()  # back: the rest comes through, nobody restarted
    wait_until(lambda: np.array_equal(read(chain.host, "bdata", "three.b2nd"),
                                      chain.data["three.b2nd"]), timeout=30,
               what="three.b2nd once the origin is back")


def test_relay_down_downstream_serves_its_cache_and_503_then_resumes(chain):
    np.testing.assert_array_equal(read(chain.host, "bdata", "one.b2nd"), chain.data["one.b2nd"])
    chain.pubs["A"].stop(kill=True)  # the relay between sites A and B

    np.testing.assert_array_equal(read(chain.host, "bdata", "one.b2nd"), chain.data["one.b2nd"])
    error = refused(chain.host, "bdata", "two.b2nd")
    assert error.response.status_code in (502, 503, 504), error

    chain.pubs["A"].start()
    wait_until(lambda: np.array_equal(read(chain.host, "bdata", "two.b2nd"),
                                      chain.data["two.b2nd"]), timeout=30,
               what="two.b2nd once the relay is back")


def test_restarted_pieces_resynchronise_by_themselves(chain):
    np.testing.assert_array_equal(read(chain.host, "bdata", "one.b2nd"), chain.data["one.b2nd"])
    # The subscriber a relay reads from restarts: the relay waits, then follows it again.
    chain.subs["A"].restart()
    new = big_array(chain.source, "one.b2nd", seed=100)
    wait_until(lambda: np.array_equal(read(chain.host, "bdata", "one.b2nd"), new),
               timeout=30, what="a change after site A's subscriber restarted")

    # A relay restarted while the subscriber it reads is down starts with the index it
    # kept, serves what is cached downstream, and follows again once it is back.
    chain.subs["B"].stop()
    chain.pubs["B"].restart()
    np.testing.assert_array_equal(read(chain.host, "bdata", "one.b2nd"), new)
    hops = httpx.get(f"http://{chain.pubs['B'].address}/api/root").json()["hops"]
    assert [hop["root"] for hop in hops] == ["adata", "data"]  # (kept from the last start)
    chain.subs["B"].start()
    newer = big_array(chain.source, "two.b2nd", seed=101)
    wait_until(lambda: np.array_equal(read(chain.host, "bdata", "two.b2nd"), newer),
               timeout=30, what="a change after the relay restarted")

    # The last site's own subscriber restarted: it keeps its subscription and cache.
    chain.subs["C"].restart()
    np.testing.assert_array_equal(read(chain.host, "bdata", "two.b2nd"), newer)


def test_a_loop_is_refused_at_start_with_a_clear_error(chain):
    # The origin's publisher (same key) would re-publish bdata, which comes from it.
    chain.pubs["O"].stop()
    with pytest.raises(RuntimeError) as info:
        chain.stacks["O"].publisher("data", f"http://{chain.subs['C'].address}/bdata",
                                    id_="data")
    assert "it would be a loop" in str(info.value), str(info.value)
    assert "root 'adata'" in str(info.value) and "root 'data'" in str(info.value)
    # The origin, started again as it was, serves the chain as before.
    chain.pubs["O"].start()
    wait_until(lambda: np.array_equal(read(chain.host, "bdata", "one.b2nd"),
                                      chain.data["one.b2nd"]), timeout=30,
               what="one.b2nd from the origin started again")


def test_a_loop_formed_after_the_start_is_found_and_refused_until_it_is_undone(chain):
    """The origin replaced by a publisher (another key, the name released to it) that
    re-publishes the end of the chain: each relay asks again where its root comes from
    (every CHAIN_CHECK_S), so relay A finds itself upstream and serves none of the root,
    saying why, instead of passing reads around the loop; the origin back, it serves again."""
    np.testing.assert_array_equal(read(chain.host, "bdata", "one.b2nd"), chain.data["one.b2nd"])
    broker_state = chain.stacks["O"].broker.statedir
    origin = chain.pubs["O"]
    origin.stop()
    assert cat2admin("--statedir", broker_state, "release", "data").returncode == 0
    impostor = chain.stacks["O"].publisher(
        "data", f"http://{chain.subs['C'].address}/bdata", id_="impostor")
    chunk = f"http://{chain.links['A'].address}/api/chunks/two.b2nd"

    def loop_refused() -> bool:
        r = httpx.get(chunk, params={"nchunks": "0"}, timeout=10)
        return r.status_code == 503 and "it would be a loop" in r.json()["detail"]

    wait_until(loop_refused, timeout=40, what="relay A refusing the loop")
    refused(chain.host, "bdata", "two.b2nd")  # (an error at once, not reads going round)
    impostor.stop()
    assert cat2admin("--statedir", broker_state, "release", "data").returncode == 0
    origin.start()
    wait_until(lambda: np.array_equal(read(chain.host, "bdata", "two.b2nd"),
                                      chain.data["two.b2nd"]), timeout=40,
               what="two.b2nd once the origin is back")
