"""Re-publishing with access control: a relay presents its own key upstream, and each
site serves only whom it allows."""
from __future__ import annotations

import blosc2
import httpx
import numpy as np
import pytest

from caterva2.config import API_KEY_ENV
from caterva2.tests.harness import Service, wait_until
from caterva2.tests.relay_chain import Chain, big_array


@pytest.fixture
def chain(tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    c = Chain(tmp_path / "state", source, login="AC")
    c.data = big_array(source, "one.b2nd")
    try:
        yield c
    finally:
        c.stop()


def test_relay_reads_upstream_with_its_own_key_and_sites_serve_their_own_users(chain, tmp_path):
    wait_until(lambda: "one.b2nd" in chain.client("C").list("bdata"),
               what="one.b2nd at site C")
    np.testing.assert_array_equal(chain.client("C").get_dataset("bdata/one.b2nd")[:],
                                  chain.data)
    # Site C allows only its own users: no key, or site A's key, is refused there.
    for key in (None, chain.keys["A"]):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.get(f"http://{chain.host}/api/list/bdata", headers=headers)
        assert r.status_code == 401, (key, r.status_code)
    # Site A's relay endpoints, too, need a user of site A.
    r = httpx.get(f"http://{chain.subs['A'].address}/api/relay/data/index")
    assert r.status_code == 401
    # Site A's relay passes downloads on with its own key (its publisher is open, as
    # publishers are: a site's subscriber is what serves its users).
    r = httpx.get(f"http://{chain.links['A'].address}/api/download/one.b2nd", timeout=60)
    assert r.status_code == 200, r.text
    (tmp_path / "one.b2nd").write_bytes(r.content)
    np.testing.assert_array_equal(blosc2.open(str(tmp_path / "one.b2nd"))[:], chain.data)


def test_a_relay_without_a_key_upstream_is_refused_with_a_clear_error(chain, tmp_path):
    upstream = f"http://{chain.subs['A'].address}/data"
    for env in ({}, {API_KEY_ENV: "not-a-key"}):
        with pytest.raises(RuntimeError) as info:
            chain.stacks["A"].publisher("other", upstream, id_=f"other{len(env)}", env=env)
        assert "refused to let this publisher subscribe to it" in str(info.value)
        assert "(root 'data', 401)" in str(info.value), str(info.value)
        assert "CATERVA2_API_KEY, or api_key in [publisher]: " + (
            "given" if env else "none given") in str(info.value)
    # Named in the configuration file (root = "http://...", api_key), it starts.
    conf = tmp_path / "caterva2.toml"
    conf.write_text(f'[publisher]\nname = "other"\nroot = "{upstream}"\n'
                    f'api_key = "{chain.keys["A"]}"\n')
    other = Service("publisher", ["--conf", str(conf)], tmp_path / "pub.other",
                    broker=chain.stacks["A"].broker.address)
    try:
        r = httpx.get(f"http://{other.address}/api/root")
        assert r.json()["name"] == "other" and r.json()["hops"][0]["root"] == "data"
    finally:
        other.stop()
