"""Attacks on a broker, made for real against running services, and what they get.

Each test attempts one thing a stranger (or a careless publisher) could do to a deployment:
take over a root name while its publisher is down, announce deletions in someone else's
root, register an address that makes the broker and subscribers send requests elsewhere,
send a huge body, present no or a wrong token.  Each asserts the refusal (status and
message) and that nothing was lost or changed: the listing, the subscriber's datasets and
cache.  Then: an operator's release, roots of silent publishers, unsubscribing.
"""
from __future__ import annotations

import http.server
import pathlib
import secrets
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
from caterva2.config import BROKER_TOKEN_ENV
from caterva2.models import PUBLISHER_KEY_HEADER
from caterva2.tests.harness import Stack, cat2admin, register_root, wait_until

TOKEN = "tok-" + "a1b2c3d4" * 4
ATTACKS = ["open", "token"]  # a broker without a token, and one with


def cat2cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caterva2.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def make_root(directory: pathlib.Path, n: int = 3) -> pathlib.Path:
    """``directory`` with ``a0.b2nd``... ``a{n-1}.b2nd``: 1000 int64 each (10 chunks)."""
    directory.mkdir()
    for i in range(n):
        blosc2.asarray(np.arange(1000) + i, urlpath=str(directory / f"a{i}.b2nd"),
                       mode="w", chunks=(100,), blocks=(10,))
    return directory


class Deployment:
    """A broker (with ``token`` or open), root ``data`` published, and a subscriber
    following it with ``a0.b2nd`` read whole (cached)."""

    def __init__(self, statedir: pathlib.Path, source: pathlib.Path, token: str | None,
                 broker_args: tuple[str, ...] = ()):
        self.token = token
        self.env = {BROKER_TOKEN_ENV: token} if token else {}
        self.stack = Stack(statedir, broker_args=broker_args, broker_env=self.env)
        self.broker = self.stack.broker.address
        self.publisher = self.stack.publisher("data", source, env=self.env)
        self.sub = self.stack.subscriber()
        wait_until(lambda: "data" in cat2.get_roots(self.sub.address), what="root data")
        cat2.subscribe("data", self.sub.address)
        np.testing.assert_array_equal(cat2.fetch("data/a0.b2nd", self.sub.address),
                                      np.arange(1000))

    def listing(self) -> dict:
        return httpx.get(f"http://{self.broker}/api/roots", timeout=10).json()

    def headers(self, key: str | None = None, token: str | None = None) -> dict[str, str]:
        """A publisher's headers: ``key`` (default: a new one), the deployment's token."""
        headers = {PUBLISHER_KEY_HEADER: key or secrets.token_urlsafe(32)}
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        return headers

    def state(self) -> tuple:
        """What must not change under an attack: the broker's listing, the subscriber's
        datasets and cached bytes."""
        with cat2.Client(self.sub.address) as client:
            return self.listing(), client.list("data"), client.cache()["usage"]

    def assert_intact(self, before: tuple) -> None:
        time.sleep(0.5)  # (time for whatever might have got through to reach the subscriber)
        assert self.state() == before
        np.testing.assert_array_equal(cat2.fetch("data/a0.b2nd", self.sub.address),
                                      np.arange(1000))


@pytest.fixture(params=ATTACKS)
def deployment(request, tmp_path) -> Iterator[Deployment]:
    d = Deployment(tmp_path / "state", make_root(tmp_path / "data"),
                   TOKEN if request.param == "token" else None)
    try:
        yield d
    finally:
        d.stack.stop()


def test_no_take_over_of_a_root_while_its_publisher_is_down(deployment, tmp_path):
    """The issue's take-over: with the publisher of ``data`` down, another publisher of
    ``data`` (with the token, if the broker has one) and a direct registration are refused;
    the real publisher, back from another address, gets its name back."""
    d = deployment
    d.publisher.stop(kill=True)
    before = d.state()
    other = make_root(tmp_path / "other", n=1)
    intruder = d.stack.publisher("data", other, id_="intruder", env=d.env)
    wait_until(lambda: "belongs to another publisher" in intruder.log_tail(50),
               what="the intruder's refusal in its log")
    r = httpx.post(f"http://{d.broker}/api/roots", headers=d.headers(), timeout=10,
                   json={"name": "data", "http": intruder.address})
    assert r.status_code == 409, r.text
    assert "cat2admin --statedir BROKER_STATEDIR release data" in r.json()["detail"]
    assert httpx.get(f"http://{intruder.address}/health").json()["registered"] is False
    d.assert_intact(before)
    d.publisher.http = "127.0.0.1:0"  # (restarted at another port)
    d.publisher.start()
    wait_until(lambda: d.listing()["data"]["http"] == d.publisher.address,
               what="the real publisher registered at its new address")
    wait_until(lambda: cat2.fetch("data/a2.b2nd", d.sub.address, "0:3").tolist() == [2, 3, 4],
               what="uncached data read from the real publisher's new address")


def test_forged_events_are_refused(deployment):
    """The issue's forged event (every path deleted) from a client without a key, from
    another publisher (a real one, of its own root) and without the token: refused, and
    the subscriber keeps its listing and its cache."""
    d = deployment
    stranger_key = secrets.token_urlsafe(32)
    assert register_root(d.broker, "stranger", "127.0.0.1:9", stranger_key,
                         d.token).status_code == 200
    before = d.state()
    forged = {"root": "data", "changed": {}, "deleted": ["a0.b2nd", "a1.b2nd", "a2.b2nd"]}
    url = f"http://{d.broker}/api/events"
    attempts = [({}, 401, "requires its token" if d.token else "no publisher key"),
                (d.headers(stranger_key), 403, "only the publisher of root 'data'"),
                (d.headers(d.publisher.key, token="not-the-token") if d.token else
                 {PUBLISHER_KEY_HEADER: "guessed"}, 401 if d.token else 403,
                 "wrong broker token" if d.token else "only the publisher of root 'data'")]
    for headers, status, words in attempts:
        r = httpx.post(url, json=forged, headers=headers, timeout=10)
        assert r.status_code == status and words in r.json()["detail"], r.text
    d.assert_intact(before)


def test_a_registration_cannot_point_the_broker_elsewhere(tmp_path):
    """The issue's ``127.0.0.1:PORT/internal/admin?x=``, and other addresses that are not
    HOST:PORT: refused, listed nowhere, and the server at PORT is never asked anything
    (the broker probes listed publishers several times a second here)."""
    asked: list[str] = []

    class Trap(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # (http.server's name)
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trap) as trap:
        threading.Thread(target=trap.serve_forever, daemon=True).start()
        port = trap.server_address[1]
        stack = Stack(tmp_path / "state", broker_args=["--unreachable-after", "0.6s"])
        try:
            sub = stack.subscriber()
            for address in (f"127.0.0.1:{port}/internal/admin?x=",
                            f"http://127.0.0.1:{port}/internal/admin",
                            f"127.0.0.1:{port}?x=", f"127.0.0.1:{port}#x",
                            f"user@127.0.0.1:{port}", f"127.0.0.1: {port}",
                            f"gopher://127.0.0.1:{port}", f"127.0.0.1:{port}:80"):
                r = register_root(stack.broker.address, "trap", address)
                assert r.status_code == 400, (address, r.text)
                assert "bad publisher address" in r.json()["detail"], r.text
            time.sleep(1)  # (several probe rounds)
            assert httpx.get(f"http://{stack.broker.address}/api/roots").json() == {}
            assert cat2.get_roots(sub.address) == {}
        finally:
            stack.stop()
            trap.shutdown()
    assert asked == []


@pytest.mark.parametrize("what", ["root name", "event"])
def test_a_huge_request_is_a_413(deployment, what):
    """The issue's 200 MB root name and 50 MB event, at 5 MB: a 413 that says so, and
    the broker keeps working with nothing changed."""
    d = deployment
    before = d.state()
    if what == "root name":
        url, body = "/api/roots", {"name": "x" * 5_000_000, "http": "127.0.0.1:9"}
    else:
        url, body = "/api/events", {"root": "data", "deleted": [f"d/{n}" for n in range(500_000)]}
    start = d.stack.broker.peak_memory_mb()
    r = httpx.post(f"http://{d.broker}{url}", json=body, headers=d.headers(d.publisher.key),
                   timeout=60)
    assert r.status_code == 413, r.text[:200]
    assert "request body too large" in r.json()["detail"]
    d.assert_intact(before)
    grown = d.stack.broker.peak_memory_mb() - start
    assert not grown > 20, f"the broker grew by {grown:.0f} MiB"  # (NaN: not on Linux)


def test_a_huge_request_head_is_cut_off(stack):
    """5 MB of headers: the broker cuts the connection (it holds 64 kB of a request's head
    at most), and keeps working."""
    start = stack.broker.peak_memory_mb()
    host, port = stack.broker.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        try:
            connection.sendall(b"GET /api/roots HTTP/1.1\r\nHost: x\r\nX-Big: "
                               + b"y" * 5_000_000 + b"\r\n\r\n")
            answer = connection.recv(100)
        except OSError:  # (cut while sending: as good)
            answer = b""
    assert answer == b"" or answer.split()[1] in (b"400", b"431"), answer
    assert httpx.get(f"http://{stack.broker.address}/health").json()["status"] == "ok"
    grown = stack.broker.peak_memory_mb() - start
    assert not grown > 20, f"the broker grew by {grown:.0f} MiB"


def test_a_broker_with_a_token_refuses_publishers_without_it(tmp_path):
    stack = Stack(tmp_path / "state", broker_env={BROKER_TOKEN_ENV: TOKEN})
    try:
        assert "publishers must present the broker token" in stack.broker.log_tail()
        source = make_root(tmp_path / "data", n=1)
        for id_, env, words in (("none", {}, "requires its token"),
                                ("wrong", {BROKER_TOKEN_ENV: "tok-wrong"}, "wrong broker token")):
            publisher = stack.publisher(f"data-{id_}", source, env=env)
            wait_until(lambda p=publisher, w=words: w in p.log_tail(50),
                       what=f"the refusal of the publisher with token {id_}")
            assert httpx.get(f"http://{publisher.address}/health").json()["registered"] is False
        r = register_root(stack.broker.address, "data", "127.0.0.1:9", token="tok-unknown")
        assert r.status_code == 401 and "wrong broker token" in r.json()["detail"], r.text
        assert httpx.get(f"http://{stack.broker.address}/api/roots").json() == {}
        good = stack.publisher("data", source, env={BROKER_TOKEN_ENV: TOKEN})
        wait_until(lambda: httpx.get(f"http://{good.address}/health").json()["registered"],
                   what="the publisher with the token registered")
        assert list(httpx.get(f"http://{stack.broker.address}/api/roots").json()) == ["data"]
    finally:
        stack.stop()


def test_an_open_broker_says_so_when_it_starts(stack):
    assert "cat2bro: open to all publishers (no token" in stack.broker.log_tail()


def test_cat2admin_lists_and_releases_names(deployment, tmp_path):
    """``bindings`` and ``release`` on the state directory of a running broker; a name
    released while its publisher is down goes to the next publisher that asks."""
    d = deployment
    statedir = d.stack.broker.statedir
    done = cat2admin("--statedir", statedir, "bindings")
    assert done.returncode == 0 and done.stdout.startswith("data  bound "), done.stderr
    assert f"first registered from {d.publisher.address}" in done.stdout
    assert d.publisher.key not in (statedir / "bindings.json").read_text()
    key_file = d.publisher.statedir / "publisher.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # (its owner's only)
    d.publisher.stop()
    done = cat2admin("--statedir", statedir, "release", "data")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("released root name 'data' (bound "), done.stdout
    successor = make_root(tmp_path / "successor", n=1)
    d.stack.publisher("data", successor, id_="successor", env=d.env)
    wait_until(lambda: cat2.get_list("data", d.sub.address) == ["a0.b2nd"],
               what="the successor's datasets at the subscriber")
    for args, words in ((["release", "data-nope"], "'data-nope' is not bound"),
                        (["release", "../x"], "invalid root name"),
                        (["bindings"], "not a broker's state directory")):
        where = tmp_path if args == ["bindings"] else statedir
        done = cat2admin("--statedir", where, *args)
        assert done.returncode == 1 and words in done.stderr, done.stderr
        assert done.stderr.startswith("cat2admin: error: ") and "Traceback" not in done.stderr


def test_roots_of_silent_publishers_are_marked_then_dropped(tmp_path):
    """With ``--unreachable-after 1s --drop-after 4s``: a killed publisher's root is listed
    ``(unreachable)`` by ``cat2cli roots`` within seconds, then no longer listed at the
    broker (the subscriber keeps listing it while it is subscribed); the live one stays as
    it was; the dead one, back, is listed again."""
    stack = Stack(tmp_path / "state", broker_args=["--unreachable-after", "1s",
                                                   "--drop-after", "4s"])
    try:
        live = stack.publisher("live", make_root(tmp_path / "live", n=1))
        dead = stack.publisher("dead", make_root(tmp_path / "dead", n=1))
        sub = stack.subscriber()
        wait_until(lambda: {"live", "dead"} <= set(cat2.get_roots(sub.address)),
                   what="both roots at the subscriber")
        cat2.subscribe("dead", sub.address)

        def roots() -> list[str]:
            done = cat2cli("--host", sub.address, "roots")
            assert done.returncode == 0, done.stderr
            return done.stdout.splitlines()

        assert roots() == ["dead (subscribed)", "live"]
        dead.stop(kill=True)
        wait_until(lambda: roots() == ["dead (subscribed) (unreachable)", "live"],
                   timeout=15, what="dead marked unreachable")
        wait_until(lambda: "dead" not in httpx.get(
            f"http://{stack.broker.address}/api/roots").json(), timeout=15, what="dead dropped")
        assert roots() == ["dead (subscribed) (unreachable)", "live"]
        assert cat2.get_roots(sub.address)["dead"]["reachable"] is False
        assert cat2.get_roots(sub.address)["live"]["reachable"] is True
        assert httpx.get(f"http://{live.address}/api/root").status_code == 200
        dead.start()
        wait_until(lambda: roots() == ["dead (subscribed)", "live"], timeout=15,
                   what="dead listed again once back")
    finally:
        stack.stop()


def test_unsubscribe_stops_following_and_drops_the_cache(deployment):
    d = deployment
    host = d.sub.address
    cache_dir = d.sub.statedir / "cache" / "roots" / "data"
    with cat2.Client(host) as client:
        assert client.cache()["usage"] > 0 and cache_dir.exists()
        done = cat2cli("--host", host, "unsubscribe", "data")
        assert (done.returncode, done.stdout) == (0, "Ok\n"), done.stderr
        assert client.roots()["data"]["subscribed"] is False
        assert not cache_dir.exists()
        wait_until(lambda: client.cache()["usage"] == 0, timeout=5,  # (measured once a second)
                   what="the cache's usage back to 0")
        with pytest.raises(cat2.ServerError, match="'data' is not subscribed") as error:
            client.list("data")
        assert error.value.status_code == 404
        with pytest.raises(cat2.ServerError, match="'data' is not subscribed"):
            cat2.fetch("data/a0.b2nd", host)
        done = cat2cli("--host", host, "unsubscribe", "data")
        assert done.returncode == 1 and "'data' is not subscribed" in done.stderr
        time.sleep(0.3)
        assert not cache_dir.exists()  # (nothing brought back by events or resyncs)
        assert cat2.subscribe("data", host) == "Ok"
        np.testing.assert_array_equal(cat2.fetch("data/a1.b2nd", host), np.arange(1000) + 1)
        assert cat2.unsubscribe("data", host) == "Ok"
        assert not cache_dir.exists()


def test_unsubscribe_of_an_unknown_root(sub_host):
    done = cat2cli("--host", sub_host, "unsubscribe", "nope")
    assert done.returncode == 1 and "no root named 'nope'" in done.stderr, done.stderr

