"""The client session, ``caterva2.Client``: it owns its connections and closes them, and
the library and ``cat2cli`` find the subscriber the same way: an argument, else
``CATERVA2_SUBSCRIBER``, else ``caterva2.toml``, else ``localhost:8002``."""
from __future__ import annotations

import contextlib
import gc
import http.server
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2 import config, http_data
from caterva2.client import close_default_clients

PACKAGE_PARENT = pathlib.Path(cat2.__file__).resolve().parents[1]
ARRAY_2D = np.arange(200, dtype="uint16").reshape(10, 20)  # foo/dir1/ds-2d.b2nd

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="counts sockets in Linux's /proc")


def unused_address() -> str:
    """A loopback address where nothing listens: a port bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def sockets_to(address: str) -> int:
    """How many TCP sockets this process holds open towards ``address`` (any state)."""
    gc.collect()  # (sockets of objects dropped earlier must not close while we count)
    port = int(address.rpartition(":")[2])
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # (the directory's own descriptor, closed meanwhile)
            continue
        if target.startswith("socket:["):
            ours.add(target[len("socket:["):-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                remote_port, inode = int(fields[2].rpartition(":")[2], 16), fields[9]
                count += inode in ours and remote_port == port
    return count


def cat2cli(*args: str, cwd: pathlib.Path, **env: str | None) -> subprocess.CompletedProcess:
    """Run ``cat2cli ARGS`` in ``cwd`` with ``env`` changed (None removes a variable)."""
    environ = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}  # this checkout's caterva2
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return subprocess.run([sys.executable, "-m", "caterva2.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=60, check=False)


# -- sessions ------------------------------------------------------------------------

@linux_only
def test_a_client_used_as_a_context_manager_reads_and_then_closes_its_connections(sub_host):
    before = sockets_to(sub_host)
    with cat2.Client(sub_host) as client:
        ds = client.get_root("foo")["dir1/ds-2d.b2nd"]
        np.testing.assert_array_equal(ds[1:3, ::5], ARRAY_2D[1:3, ::5])
        assert client.fetch("foo/ds-hello.b2frame", slice(0, 12)) == b"Hello world!"
        assert client.pool.idle() == 1  # the data answers shared one kept-alive connection
        assert sockets_to(sub_host) > before
    assert client.closed and client.pool.idle() == 0
    assert sockets_to(sub_host) == before, "close() left connections open"
    with pytest.raises(RuntimeError, match="closed"):
        client.roots()


@linux_only
def test_two_clients_are_independent(sub_host):
    a, b = cat2.Client(sub_host), cat2.Client(sub_host)
    try:
        before = sockets_to(sub_host)
        assert a.fetch("foo/ds-1d.b2nd", "0:3").tolist() == [0, 1, 2]
        with_a = sockets_to(sub_host)
        assert b.fetch("foo/ds-1d.b2nd", "3:5").tolist() == [3, 4]
        with_both = sockets_to(sub_host)
        assert with_a > before and with_both > with_a
        a.close()
        assert sockets_to(sub_host) == with_both - (with_a - before)
        assert b.fetch("foo/ds-1d.b2nd", "5").tolist() == 5  # b is untouched
        with pytest.raises(RuntimeError, match="closed"):
            a.fetch("foo/ds-1d.b2nd", "5")
    finally:
        b.close()
    assert sockets_to(sub_host) == before


def test_one_client_serves_many_threads_at_once(sub_host):
    with cat2.Client(sub_host) as client:
        ds = client.get_dataset("foo/dir1/ds-2d.b2nd")
        with ThreadPoolExecutor(8) as pool:
            rows = list(pool.map(lambda i: ds[i % 10], range(80)))
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(row, ARRAY_2D[i % 10])
        assert 1 <= client.pool.idle() <= 8


def test_an_injected_http_client_is_used_and_left_open():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"bar": {"name": "bar", "http": "x:1",
                                                 "subscribed": False}})

    with httpx.Client(transport=httpx.MockTransport(answer)) as http:
        with cat2.Client("example.org:8002", http=http) as client:
            assert list(client.roots()) == ["bar"]
        assert not http.is_closed
    assert seen == ["http://example.org:8002/api/roots"]


def test_objects_accept_a_client_and_say_which_host(sub_host):
    with cat2.Client(sub_host) as client:
        root = cat2.Root("foo", client=client)
        ds = root["dir1/ds-2d.b2nd"]
        assert ds.client is client and ds.host == root.host == sub_host
        assert isinstance(cat2.File("README.md", "foo", client=client), cat2.File)
        with pytest.raises(ValueError, match="give one or the other"):
            cat2.Root("foo", host=unused_address(), client=client)


def test_shared_clients_can_be_closed_and_are_made_again(sub_host):
    assert "foo" in cat2.get_roots(sub_host)
    close_default_clients()
    assert cat2.get_info("foo/ds-1d.b2nd", sub_host)["shape"] == [1000]


class ShortKeepAlive(http.server.BaseHTTPRequestHandler):
    """Answers ``ok`` over kept-alive connections, which it closes after 0.2 s idle."""
    protocol_version = "HTTP/1.1"
    timeout = 0.2

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_the_pool_skips_connections_the_server_closed():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), ShortKeepAlive) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        try:
            with http_data.ConnectionPool() as pool:
                with contextlib.ExitStack() as answers:  # three at once: three connections
                    for _ in range(3):
                        assert answers.enter_context(pool.get(url)).read() == b"ok"
                assert pool.idle() == 3
                time.sleep(0.6)  # the server closes all three
                with pool.get(url) as r:
                    assert r.status == 200 and r.read() == b"ok"
                assert pool.idle() == 1
        finally:
            server.shutdown()


# -- finding the subscriber ----------------------------------------------------------

def test_the_address_comes_from_argument_environment_file_or_default(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[subscriber]\nhttp = "conf.example:1"\n')
    env = {config.SUBSCRIBER_ENV: "env.example:2"}
    assert config.subscriber_address("arg.example:3", conf, env) == ("arg.example:3", "argument")
    assert config.subscriber_address(None, conf, env) == ("env.example:2", "CATERVA2_SUBSCRIBER")
    assert config.subscriber_address(None, conf, {config.SUBSCRIBER_ENV: ""}) == \
        ("conf.example:1", str(conf))  # (an empty variable is no address)
    (tmp_path / "empty.toml").write_text("")
    assert config.subscriber_address(None, tmp_path / "empty.toml", {}) == \
        ("localhost:8002", "the default")


def test_the_library_honours_CATERVA2_SUBSCRIBER(sub_host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CATERVA2_SUBSCRIBER", sub_host)
    root = cat2.Root("foo")
    assert root.host == sub_host and root.client.host_source == "CATERVA2_SUBSCRIBER"
    assert root["ds-hello.b2frame"][:12] == b"Hello world!"
    assert cat2.get_list("foo") == root.node_list
    monkeypatch.setenv("CATERVA2_SUBSCRIBER", unused_address())
    assert "foo" in cat2.get_roots(sub_host)  # an argument comes first


def test_root_finds_the_subscriber_of_caterva2_toml(sub_host, tmp_path, monkeypatch):
    # The complaint of the issue: cat2cli found its subscriber here, cat2.Root("foo") did not.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CATERVA2_SUBSCRIBER", raising=False)
    (tmp_path / "caterva2.toml").write_text(f'[subscriber]\nhttp = "{sub_host}"\n')
    root = cat2.Root("foo")
    assert root.host == sub_host and root.client.host_source == "caterva2.toml"
    np.testing.assert_array_equal(root["dir1/ds-2d.b2nd"][1, ::5], ARRAY_2D[1, ::5])


def test_cat2cli_honours_CATERVA2_SUBSCRIBER_before_caterva2_toml(sub_host, tmp_path):
    nowhere = unused_address()
    (tmp_path / "caterva2.toml").write_text(f'[subscriber]\nhttp = "{nowhere}"\n')
    done = cat2cli("roots", cwd=tmp_path, CATERVA2_SUBSCRIBER=sub_host)
    assert done.returncode == 0, done.stderr
    assert "foo (subscribed)" in done.stdout.splitlines()

    done = cat2cli("roots", cwd=tmp_path, CATERVA2_SUBSCRIBER=None)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"cat2cli: error: cannot reach the subscriber at {nowhere} "
                                   "(from caterva2.toml; is cat2sub running?)")


def test_cat2cli_host_comes_first_and_its_error_is_unchanged(sub_host, tmp_path):
    nowhere = unused_address()
    done = cat2cli("--host", nowhere, "roots", cwd=tmp_path, CATERVA2_SUBSCRIBER=sub_host)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"cat2cli: error: cannot reach the subscriber at {nowhere} "
                                   "(is cat2sub running?)")


def test_a_connection_error_names_the_address_and_where_it_came_from(tmp_path, monkeypatch):
    nowhere = unused_address()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CATERVA2_SUBSCRIBER", nowhere)
    with pytest.raises(cat2.ConnectionFailed) as error:
        cat2.Root("foo")
    assert str(error.value) == (f"cannot reach the subscriber at {nowhere} "
                                "(from CATERVA2_SUBSCRIBER; is cat2sub running?)")
    assert isinstance(error.value, httpx.ConnectError)  # what code written before catches

    monkeypatch.delenv("CATERVA2_SUBSCRIBER")
    (tmp_path / "caterva2.toml").write_text(f'[subscriber]\nurl = "http://{nowhere}/"\n')
    with cat2.Client() as client, pytest.raises(cat2.ConnectionFailed) as error:
        client.fetch("foo/ds-1d.b2nd", "0:3")  # (data answers come another way)
    assert str(error.value) == (f"cannot reach the subscriber at http://{nowhere} "
                                "(from caterva2.toml; is cat2sub running?)")

    with pytest.raises(cat2.ConnectionFailed) as error:
        cat2.get_roots(nowhere)
    assert str(error.value) == f"cannot reach the subscriber at {nowhere} (is cat2sub running?)"


def test_a_bad_address_says_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CATERVA2_SUBSCRIBER", "localhost:abc")
    with pytest.raises(config.ConfigError,
                       match=r"expected HOST:PORT .* \(from CATERVA2_SUBSCRIBER\)$"):
        cat2.Client()
