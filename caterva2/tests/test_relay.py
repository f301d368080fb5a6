"""Re-publishing: a root served onward through two relays (origin → A → B → C), each
site with its own broker; what crosses each long link is counted."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import threading

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.tests.harness import wait_until
from caterva2.tests.relay_chain import Chain, example_source

EXAMPLES = ["README.md", "ds-hello.b2frame", "ds-1d.b2nd", "ds-1d-b.b2nd", "ds-1d-fields.b2nd",
            "ds-sc-attr.b2nd", "dir1/ds-2d.b2nd", "dir1/ds-3d.b2nd", "dir2/ds-4d.b2nd"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("relay")
    c = Chain(tmp / "state", example_source(tmp / "data"))
    try:
        yield c
    finally:
        c.stop()


def origin_sub(chain: Chain) -> str:
    """Site A's subscriber: it reads the origin directly (one hop)."""
    cat2.subscribe("data", chain.subs["A"].address)
    return chain.subs["A"].address


def test_listing_info_and_data_identical_to_the_origin(chain):
    near = origin_sub(chain)
    assert cat2.get_list("bdata", chain.host) == cat2.get_list("data", near)
    for path in EXAMPLES:
        far = cat2.Root("bdata", host=chain.host)[path]
        here = cat2.Root("data", host=near)[path]
        assert far.meta == here.meta, path
        assert_same(far.fetch(), here.fetch(), path)
    ds = cat2.Root("bdata", host=chain.host)["dir2/ds-4d.b2nd"]
    np.testing.assert_array_equal(ds[1, 1:3, ::2], cat2.Root("data", host=near)[
        "dir2/ds-4d.b2nd"][1, 1:3, ::2])


def assert_same(a, b, what):
    if isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        assert a == b, what


def test_downloads_identical_to_the_origin(chain, tmp_path, monkeypatch):
    near = origin_sub(chain)
    for path in ["README.md", "dir1/ds-2d.b2nd", "ds-hello.b2frame"]:
        monkeypatch.chdir(tmp_path)
        far_path = cat2.Root("bdata", host=chain.host)[path].download()
        monkeypatch.chdir(tmp_path.parent)
        here = cat2.Root("data", host=near)[path].download()
        assert_same_file(tmp_path / far_path, tmp_path.parent / here, path)


def test_dataset_urls_downstream_serve_the_origins_file(chain, tmp_path):
    """``cat2cli url ROOT/PATH`` at the end of the chain gives the last relay's
    ``/api/download``: it passes the file on from upstream, whole or in ranges."""
    for path in ["README.md", "dir1/ds-2d.b2nd", "ds-hello.b2frame"]:
        done = cli(chain.host, "url", f"bdata/{path}")
        assert done.returncode == 0, done.stderr
        url = done.stdout.splitlines()[0]  # (then where the root comes from, hop by hop)
        assert url.startswith(f"http://{chain.links['B'].address}/api/download/"), url
        far = httpx.get(url, timeout=30)
        assert far.status_code == 200, far.text
        origin = httpx.get(f"http://{chain.links['O'].address}/api/download/{path}", timeout=30)
        # (ordinary files come as their .b2 SChunk from every publisher)
        suffix = ".b2nd" if path.endswith(".b2nd") else ".b2frame"
        (tmp_path / f"far{suffix}").write_bytes(far.content)
        (tmp_path / f"origin{suffix}").write_bytes(origin.content)
        assert_same_file(tmp_path / f"far{suffix}", tmp_path / f"origin{suffix}", path)
        part = httpx.get(url, headers={"Range": "bytes=10-99"}, timeout=30)
        assert part.status_code == 206 and part.content == far.content[10:100], path
    missing = httpx.get(f"http://{chain.links['B'].address}/api/download/nope.b2nd", timeout=30)
    assert missing.status_code == 404 and "nope.b2nd" in missing.json()["detail"]


def assert_same_file(a: pathlib.Path, b: pathlib.Path, what: str) -> None:
    """Same chunks, as stored, and same data (chunks may lie in another order in the file:
    the order in which they were fetched)."""
    if a.suffix != ".b2nd" and a.suffix != ".b2frame":
        assert a.read_bytes() == b.read_bytes(), what
        return
    x, y = blosc2.open(str(a)), blosc2.open(str(b))
    xs, ys = getattr(x, "schunk", x), getattr(y, "schunk", y)
    assert xs.nchunks == ys.nchunks, what
    for n in range(xs.nchunks):
        assert xs.get_chunk(n) == ys.get_chunk(n), f"{what}: chunk {n}"
    assert x[:] == y[:] if isinstance(x, blosc2.SChunk) else np.array_equal(x[:], y[:]), what


def test_n_clients_move_the_data_across_each_link_once(chain):
    stored = (chain.source / "big.b2nd").stat().st_size
    before = chain.moved()
    relays_before = relays_read(chain)
    results: list[np.ndarray] = []

    def read() -> None:
        results.append(cat2.Root("bdata", host=chain.host)["big.b2nd"][:])

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 4
    origin = blosc2.open(str(chain.source / "big.b2nd"))[:]
    for got in results:
        np.testing.assert_array_equal(got, origin)
    moved = {site: n - before[site] for site, n in chain.moved().items()}
    for site, n in moved.items():
        assert stored * 0.9 <= n <= stored * 1.1 + 100_000, \
            f"link from {site}: {n} bytes moved for {stored} stored ({moved})"
    # Each relay, too, reads it once from the subscriber it re-publishes.
    for site, n in relays_read(chain).items():
        assert n - relays_before[site] <= stored * 1.1 + 100_000, (site, n, stored)
    # Read again: all cached at C, nothing moves anywhere.
    again = chain.moved()
    np.testing.assert_array_equal(cat2.Root("bdata", host=chain.host)["big.b2nd"][:], origin)
    assert chain.moved() == again


def relays_read(chain: Chain) -> dict[str, int]:
    """Bytes each relay has read from the subscriber it re-publishes."""
    return {site: proxy.counters().down for site, proxy in chain.upstream.items()}


def test_unknown_upstream_root_is_a_clear_error_at_start(chain, tmp_path):
    from caterva2.tests.harness import Service
    with pytest.raises(RuntimeError, match="no root named 'nope'"):
        Service("publisher", ["x", f"http://{chain.subs['A'].address}/nope"],
                tmp_path / "pub.x", broker=chain.stacks["A"].broker.address)


def test_relay_endpoints_need_a_subscribed_root(chain):
    r = httpx.get(f"http://{chain.host}/api/relay/nope/index")
    assert r.status_code == 404


def test_changes_reach_the_end_of_the_chain_and_no_site_mixes_versions(chain):
    import time

    from caterva2.tests.relay_chain import big_array
    old = big_array(chain.source, "changing.b2nd", seed=10)
    chain.wait_listed("changing.b2nd")
    ds = cat2.Root("bdata", host=chain.host)["changing.b2nd"]
    np.testing.assert_array_equal(ds[:], old)  # (cached all along the chain)

    seen: list[str] = []
    stop = threading.Event()

    def keep_reading() -> None:  # every answer is one version, whole
        while not stop.is_set():
            got = ds[:]
            seen.append("old" if np.array_equal(got, old) else
                        "new" if np.array_equal(got, new) else "mixed")

    started = time.monotonic()
    new = big_array(chain.source, "changing.b2nd", seed=11)
    reader = threading.Thread(target=keep_reading)
    reader.start()
    try:
        wait_until(lambda: np.array_equal(ds[:], new), timeout=15,
                   what="the new version at the end of the chain")
    finally:
        stop.set()
        reader.join(60)
    took = time.monotonic() - started
    print(f"change crossed three hops in {took:.2f} s; reads seen: {len(seen)}")
    assert "mixed" not in seen, seen
    assert took < 10, f"a change took {took:.1f} s to cross three hops"

    # A dataset added, then deleted, at the origin: listed, then gone, at the end.
    big_array(chain.source, "added.b2nd", seed=12)
    chain.wait_listed("added.b2nd")
    (chain.source / "added.b2nd").unlink()
    wait_until(lambda: "added.b2nd" not in cat2.get_list("bdata", chain.host), timeout=15,
               what="added.b2nd gone at the end of the chain")


def cli(host: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caterva2.cli", "--host", host, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_url_and_info_say_hop_by_hop_where_a_root_comes_from(chain):
    source = cat2.Client(chain.host).source("bdata")
    assert source["publisher"] == f"http://{chain.links['B'].address}"
    assert [(h["root"], h["subscriber"], h["publisher"]) for h in source["hops"]] == [
        ("adata", f"http://{chain.upstream['B'].address}", f"http://{chain.links['A'].address}"),
        ("data", f"http://{chain.upstream['A'].address}", f"http://{chain.links['O'].address}")]
    assert cat2.Client(chain.subs["A"].address).source("data")["hops"] == []  # the origin

    done = cli(chain.host, "url", "bdata")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"http://{chain.links['B'].address}"
    assert lines[1] == (f"  re-publishes root 'adata' of the subscriber at "
                        f"http://{chain.upstream['B'].address}, served by "
                        f"http://{chain.links['A'].address}")
    assert lines[2].endswith(f"served by http://{chain.links['O'].address} (the origin)")
    assert len(lines) == 3

    done = cli(chain.host, "info", "bdata/dir1/ds-2d.b2nd")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-3:] == ["source:", *lines[1:]]
    plain = cli(chain.subs["A"].address, "url", "data")  # served by its origin: one line
    assert plain.stdout.splitlines() == [f"http://{chain.links['O'].address}"]


def test_one_chunk_changed_at_the_origin_moves_that_chunk_across_each_link(chain):
    from caterva2.tests.relay_chain import big_array
    data = big_array(chain.source, "delta.b2nd", seed=20)
    chain.wait_listed("delta.b2nd")
    ds = cat2.Root("bdata", host=chain.host)["delta.b2nd"]
    np.testing.assert_array_equal(ds[:], data)  # cached all along the chain

    before = chain.moved()
    changed = np.random.default_rng(21).normal(size=(100, 1000))
    source = blosc2.open(str(chain.source / "delta.b2nd"), mode="a")
    source[300:400] = changed
    chunk_size = len(source.schunk.get_chunk(3))
    del source
    data[300:400] = changed
    wait_until(lambda: np.array_equal(ds[300, :5], changed[0, :5]), timeout=15,
               what="the change at the end of the chain")
    np.testing.assert_array_equal(ds[:], data)
    moved = {site: n - before[site] for site, n in chain.moved().items()}
    for site, n in moved.items():
        assert n <= 1.5 * chunk_size + 100_000, \
            f"link from {site}: {n} bytes moved for one changed chunk of {chunk_size}"


def test_a_small_read_moves_only_its_blocks_on_every_link(chain):
    data = np.random.default_rng(30).normal(size=(1000, 1000))
    array = blosc2.asarray(data, urlpath=str(chain.source / "onechunk.b2nd"), mode="w",
                           chunks=(1000, 1000), blocks=(50, 1000))
    chunk = array.schunk.get_chunk(0)  # one 8 MB chunk of 20 blocks
    chain.wait_listed("onechunk.b2nd")
    ds = cat2.Root("bdata", host=chain.host)["onechunk.b2nd"]

    before = chain.moved()
    small = (slice(500, 510), slice(500, 510))  # inside block 10
    np.testing.assert_array_equal(ds[small], data[small])
    moved = {site: n - before[site] for site, n in chain.moved().items()}
    for site, n in moved.items():
        assert n < len(chunk) / 10, f"link from {site}: {n} bytes for a 10x10 read ({moved})"
    print(f"a 10x10 read in one {len(chunk):,}-byte chunk moved {moved}")

    # The whole array then: what is still missing moves, about one chunk in all per link.
    np.testing.assert_array_equal(ds[:], data)
    moved = {site: n - before[site] for site, n in chain.moved().items()}
    for site, n in moved.items():
        assert n <= 1.15 * len(chunk) + 100_000, f"link from {site}: {n} ({moved})"


def test_relay_index_is_held_until_it_changes(chain):
    import time

    base = f"http://{chain.subs['A'].address}/api/relay/data/index"
    first = httpx.get(base)
    assert first.status_code == 200 and "ds-1d.b2nd" in first.json()["datasets"]
    etag = first.headers["etag"]
    started = time.monotonic()
    held = httpx.get(base, params={"wait": "0.5"}, headers={"If-None-Match": etag})
    assert held.status_code == 304 and time.monotonic() - started >= 0.4
    bad = httpx.get(f"http://{chain.subs['A'].address}/api/relay/data/chunks/ds-1d.b2nd",
                    params={"nchunks": "0", "version": "not-a-version"})
    assert bad.status_code == 412, bad.text
