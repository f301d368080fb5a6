"""TLS: every service listening with a certificate from a CA made here, and every client
(services included) checking it; a client that does not trust the CA is refused, with a
message that says why."""
import subprocess
import sys

import httpx
import numpy as np
import pytest
import trustme

import caterva2 as cat2
from caterva2.tests.harness import Stack, wait_until
from caterva2.tools import make_root_example

DATASET = "foo/dir1/ds-2d.b2nd"


@pytest.fixture
def pki(tmp_path):
    """A private CA, and a certificate of it for the loopback addresses."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(files["ca"])
    cert.private_key_pem.write_to_path(files["key"])
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(files["cert"], append=i > 0)
    return {name: str(path) for name, path in files.items()}


def test_a_deployment_over_tls(pki, tmp_path, monkeypatch):
    listen = ["--certfile", pki["cert"], "--keyfile", pki["key"]]
    monkeypatch.setenv("CATERVA2_CA_BUNDLE", pki["ca"])  # the broker's, the publisher's
    stack = Stack(tmp_path / "state", broker_args=listen)
    try:
        assert stack.broker.address.startswith("https://127.0.0.1:")
        source = make_root_example.make(tmp_path / "root-example")
        publisher = stack.publisher("foo", source, args=listen)
        # The subscriber's CA from its configuration, not the environment.
        monkeypatch.delenv("CATERVA2_CA_BUNDLE")
        conf = tmp_path / "caterva2.toml"
        conf.write_text(f'[subscriber]\nca_bundle = "{pki["ca"]}"\n')
        sub = stack.subscriber(args=[*listen, "--conf", conf])
        for service in (stack.broker, publisher, sub):
            assert "listening on https://127.0.0.1:" in service.log_tail(50)

        with cat2.Client(sub.address, ca_bundle=pki["ca"]) as client:
            wait_until(lambda: "foo" in client.roots(), what="root foo")
            assert client.roots()["foo"]["http"] == publisher.address  # https://...
            assert client.subscribe("foo") == "Ok"
            ds = client.get_dataset(DATASET)
            whole = ds[:]
            np.testing.assert_array_equal(client.fetch(DATASET, "1:3"), whole[1:3])
            saved = client.download(DATASET, tmp_path / "out")
            np.testing.assert_array_equal(cat2_open(saved), whole)
            assert client.url("foo") == [publisher.address]

        # Nobody who does not trust the CA gets an answer, and each says why.
        with cat2.Client(sub.address) as client, \
                pytest.raises(cat2.ConnectionFailed) as error:
            client.roots()
        assert "cannot be trusted" in str(error.value)
        assert "CATERVA2_CA_BUNDLE" in str(error.value)
        done = subprocess.run([sys.executable, "-m", "caterva2.cli", "--host", sub.address,
                               "roots"], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1 and "cannot be trusted" in done.stderr
        plain = sub.address.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):  # plain HTTP to a TLS port: no answer
            httpx.get(f"{plain}/api/roots", timeout=5)
    finally:
        stack.stop()


def cat2_open(path):
    import blosc2

    return blosc2.open(str(path))[:]


def test_tls_settings_are_checked_at_start(pki, tmp_path):
    for args, said in [(["--certfile", pki["cert"]], "needs both certfile and keyfile"),
                       (["--certfile", pki["cert"], "--keyfile", pki["ca"]],
                        "cannot listen with TLS"),
                       (["--broker", "ftp://localhost:8000"], "only http and https")]:
        done = subprocess.run([sys.executable, "-m", "caterva2.services.subscriber",
                               "--http", "127.0.0.1:0", "--statedir", str(tmp_path / "s"),
                               *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_re_publishing_from_a_subscriber_over_tls(pki, tmp_path, monkeypatch):
    """``cat2pub NAME https://HOST:PORT/ROOT``: the relay checks the subscriber's
    certificate with CATERVA2_CA_BUNDLE, and says why it cannot when it has no CA."""
    listen = ["--certfile", pki["cert"], "--keyfile", pki["key"]]
    monkeypatch.setenv("CATERVA2_CA_BUNDLE", pki["ca"])
    origin, there = Stack(tmp_path / "origin", broker_args=listen), Stack(tmp_path / "there")
    try:
        source = make_root_example.make(tmp_path / "root-example")
        origin.publisher("foo", source, args=listen)
        near = origin.subscriber(args=listen)
        assert near.address.startswith("https://")
        with cat2.Client(near.address, ca_bundle=pki["ca"]) as client:
            wait_until(lambda: "foo" in client.roots(), what="root foo")
        there.publisher("far", f"{near.address}/foo")
        sub = there.subscriber()
        wait_until(lambda: "far" in cat2.get_roots(sub.address), what="root far")
        cat2.subscribe("far", sub.address)
        np.testing.assert_array_equal(cat2.fetch("far/dir1/ds-2d.b2nd", sub.address),
                                      np.arange(200, dtype="uint16").reshape(10, 20))

        with pytest.raises(RuntimeError) as error:  # (no CA: the system's do not know it)
            there.publisher("far2", f"{near.address}/foo", env={"CATERVA2_CA_BUNDLE": ""})
        assert "cannot be trusted" in str(error.value), str(error.value)
    finally:
        there.stop()
        origin.stop()
