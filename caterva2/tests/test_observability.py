"""What an operator sees: ``/metrics`` (Prometheus) and ``/health`` on every service, the
subscriber's cache figures (``GET /api/cache``, ``cat2cli cache``), and a publisher behind
a proxy announcing the proxy's address (``cat2pub --url``)."""
import json
import subprocess
import sys

import blosc2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import caterva2 as cat2
from caterva2 import cli
from caterva2.tests.harness import CountingProxy, PublishedRoot, free_ports, wait_until

NCHUNKS = 10


def make_data(directory):
    """``directory/a.b2nd``: 10000 random int64 in 10 chunks; returns the stored chunk sizes."""
    directory.mkdir()
    stored = blosc2.asarray(np.random.default_rng(0).integers(0, 1000, 10_000),
                            urlpath=str(directory / "a.b2nd"), mode="w", chunks=(1000,),
                            blocks=(100,))
    return [len(stored.schunk.get_chunk(n)) for n in range(stored.schunk.nchunks)]


@pytest.fixture
def data(stack, tmp_path) -> tuple[PublishedRoot, list[int]]:
    """Root ``data`` (see :func:`make_data`), subscribed, nothing read yet; and the sizes
    of its chunks as stored."""
    sizes = make_data(tmp_path / "data")
    published = stack.publish_root("data", tmp_path / "data")
    cat2.subscribe("data", published.host)
    return published, sizes


def scrape(address: str) -> dict:
    """``/metrics`` of the service at ``address``, parsed: ``{family name: family}``."""
    r = httpx.get(f"http://{address}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers["content-type"]
    return {family.name: family for family in text_string_to_metric_families(r.text)}


def cache_figures(host: str) -> dict:
    with cat2.Client(host) as client:
        return client.cache()


def value(families: dict, name: str, **labels: str) -> float:
    """The sum of family ``name``'s samples (counters: their ``_total``) with ``labels``."""
    assert name in families, f"no metric {name} in {sorted(families)}"
    family = families[name]
    wanted = name + "_total" if family.type == "counter" else name
    return sum(s.value for s in family.samples if s.name == wanted
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_and_health_on_every_service(data, stack):
    published, _ = data
    expected = {
        stack.broker.address: ("broker", {"caterva2_broker_roots", "caterva2_broker_listeners",
                                          "caterva2_broker_events",
                                          "caterva2_broker_registrations"}),
        published.publisher.address: ("publisher", {"caterva2_publisher_chunks_served",
                                                    "caterva2_publisher_bytes_served"}),
        published.subscriber.address: ("subscriber", {
            "caterva2_cache_usage_bytes", "caterva2_cache_limit_bytes",
            "caterva2_cache_hits", "caterva2_cache_misses", "caterva2_cache_evictions",
            "caterva2_cache_evicted_bytes", "caterva2_digest_mismatches",
            "caterva2_bytes_from_publishers", "caterva2_bytes_to_clients"}),
    }
    for address, (kind, names) in expected.items():
        families = scrape(address)
        missing = (names | {"caterva2_http_requests"}) - set(families)
        assert not missing, f"{kind} /metrics lacks {sorted(missing)}"
        health = httpx.get(f"http://{address}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        assert health.json()["service"] == kind
    broker = scrape(stack.broker.address)
    assert value(broker, "caterva2_broker_roots") == 1
    assert value(broker, "caterva2_broker_listeners") == 1  # the subscriber
    assert value(broker, "caterva2_broker_registrations") >= 1
    subscriber = scrape(published.subscriber.address)
    assert value(subscriber, "caterva2_cache_limit_bytes") == float("inf")  # unlimited
    assert value(subscriber, "caterva2_cache_usage_bytes") > 0  # (the index)
    assert value(subscriber, "caterva2_http_requests", route="/api/subscribe/{root}",
                 status="200") == 1
    assert httpx.get(f"http://{published.subscriber.address}/health"
                     ).json()["broker_connected"] is True


def test_subscriber_health_says_when_the_broker_is_gone(data, stack):
    published, _ = data
    stack.broker.stop()

    def broker_link_down() -> bool:
        health = httpx.get(f"http://{published.host}/health", timeout=10)
        return health.status_code == 200 and health.json()["broker_connected"] is False

    wait_until(broker_link_down, what="/health saying the broker link is down")
    stack.broker.start()
    wait_until(lambda: httpx.get(f"http://{published.host}/health").json()["broker_connected"],
               what="/health saying the broker link is back")


def test_cold_then_warm_reads_counted(data):
    published, sizes = data
    host, pub = published.host, published.publisher.address
    url = f"http://{host}/api/fetch/data/a.b2nd"

    def read(**params) -> int:  # the length of the answer's body
        r = httpx.get(url, params={"slice_": ":", **params}, timeout=30)
        assert r.status_code == 200, r.text
        return len(r.content)

    cold = read()
    figures = cache_figures(host)
    assert (figures["misses"], figures["hits"]) == (NCHUNKS, 0), figures
    assert figures["bytes_in"] == sum(sizes), "bytes in are not the chunks as stored"
    assert figures["bytes_out"] == cold, figures
    assert figures["roots"]["data"]["misses"] == NCHUNKS
    served = scrape(pub)
    assert value(served, "caterva2_publisher_chunks_served", root="data") == NCHUNKS
    assert value(served, "caterva2_publisher_bytes_served", root="data") == sum(sizes)

    warm = read()  # answered from the cache
    streamed = read(chunks="true")  # the stored chunks, as a chunk stream
    figures = cache_figures(host)
    assert (figures["misses"], figures["hits"]) == (NCHUNKS, 2 * NCHUNKS), figures
    assert figures["bytes_in"] == sum(sizes), "a warm read fetched from the publisher"
    assert figures["bytes_out"] == cold + warm + streamed, figures
    assert figures["usage"] >= sum(sizes) and figures["limit"] is None, figures
    families = scrape(host)  # the same figures, for Prometheus
    assert value(families, "caterva2_cache_hits", root="data") == 2 * NCHUNKS
    assert value(families, "caterva2_cache_misses", root="data") == NCHUNKS
    assert value(families, "caterva2_bytes_from_publishers", root="data") == sum(sizes)
    assert value(families, "caterva2_bytes_to_clients", root="data") == cold + warm + streamed
    assert value(families, "caterva2_digest_mismatches") == 0
    assert value(families, "caterva2_cache_evictions") == 0


def test_cli_cache(data, capsys):
    published, sizes = data
    cat2.fetch("data/a.b2nd", published.host, "0:1500")  # chunks 0 and 1
    cat2.fetch("data/a.b2nd", published.host, "0:10")
    cli.main(["--host", published.host, "cache"])
    out = capsys.readouterr().out
    assert "(no limit)" in out.splitlines()[0], out
    assert "chunks read: 1 hits, 2 misses (33% hits)" in out, out
    assert "evictions: 0" in out and "digest mismatches: 0" in out, out
    rows = [line.split() for line in out.splitlines() if line.startswith("data ")]
    assert rows and rows[0][:4] == ["data", "1", "2", "0"], out
    cli.main(["--host", published.host, "cache", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert figures["roots"]["data"]["bytes_in"] == sum(sizes[:2]), figures
    assert (figures["hits"], figures["misses"], figures["evictions"]) == (1, 2, 0), figures


def test_publisher_behind_a_proxy_announces_its_url(stack, tmp_path):
    sizes = make_data(tmp_path / "data")
    port = free_ports(1)[0]
    proxy = CountingProxy(f"127.0.0.1:{port}")  # in front of the publisher, started next
    try:
        publisher = stack.publisher("data", tmp_path / "data", http=f"127.0.0.1:{port}",
                                    args=["--url", f"http://{proxy.address}/"])
        wait_until(lambda: httpx.get(f"http://{stack.broker.address}/api/roots"
                                     ).json().get("data", {}).get("http") == proxy.address,
                   what="the broker listing the proxy's address for root data")
        health = httpx.get(f"http://{publisher.address}/health").json()
        assert health["announced_as"] == proxy.address, health
        sub = stack.subscriber()
        wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data known")
        assert cat2.get_roots(sub.address)["data"]["http"] == proxy.address
        cat2.subscribe("data", sub.address)
        before = proxy.counters()
        assert cat2.fetch("data/a.b2nd", sub.address).shape == (10_000,)
        crossed = proxy.counters().down - before.down
        assert crossed >= sum(sizes), f"only {crossed} bytes crossed the proxy"
        assert cache_figures(sub.address)["bytes_in"] == sum(sizes)
    finally:
        proxy.close()


@pytest.mark.parametrize("where", ["option", "file"])
def test_publisher_refuses_a_bad_url(tmp_path, where):
    (tmp_path / "data").mkdir()
    args = [sys.executable, "-m", "caterva2.services.publisher", "data", str(tmp_path / "data"),
            "--http", "127.0.0.1:0", "--statedir", str(tmp_path / "pub")]
    if where == "option":
        args += ["--url", "https://gateway.example.org:8443/caterva2"]
    else:
        (tmp_path / "caterva2.toml").write_text('[publisher]\nurl = "gateway.example.org"\n')
        args += ["--conf", str(tmp_path / "caterva2.toml")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cat2pub: error: bad publisher URL"), lines
