"""Bad input gets a clear error (JSON detail, 4xx), never a 500 nor a traceback.

Bad requests to the subscriber and the publisher, bad selections in the client library,
bad commands, addresses and servers for ``cat2cli``, bad settings for the services.
"""
import contextlib
import functools
import http.server
import socket
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.tests.harness import closed_port_address


def cat2cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``cat2cli ARGS`` as a user would, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "caterva2.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("url, status, words", [
    ("/api/fetch/foo/ds-1d.b2nd?slice_=1:2:3:4", 400, "malformed"),
    ("/api/fetch/foo/ds-1d.b2nd?slice_=abc", 400, "malformed"),
    ("/api/fetch/foo/ds-1d.b2nd?slice_=5000", 400, "out of range"),
    ("/api/fetch/foo/ds-1d.b2nd?slice_=1,2", 400, "too many indices"),
    ("/api/fetch/foo/ds-1d.b2nd?slice_=::0", 400, "zero"),
    ("/api/fetch/foo/dir1/ds-2d.b2nd?slice_=0,99", 400, "out of range"),
    ("/api/fetch/foo/nope.b2nd", 404, "no dataset"),
    ("/api/info/foo/nope.b2nd", 404, "no dataset"),
    ("/api/fetch/nope/ds-1d.b2nd", 404, "no root"),
    ("/api/list/nope", 404, "no root"),
    ("/api/url/nope", 404, "no root"),
    ("/api/fetch/foo/%2e%2e/%2e%2e/etc/passwd", 400, "'..'"),
    ("/api/info/foo/dir1/%2e%2e/dir1/ds-2d.b2nd", 400, "'..'"),
    ("/api/fetch/foo//etc/passwd", 400, "must be relative"),
    ("/api/download/foo/%2e%2e/x", 400, "'..'"),
    ("/files/foo/%2e%2e/%2e%2e/x", 400, "'..'"),
    ("/files/foo/README.md", 404, ".b2"),
    ("/api/fetch/foo/ds-1d.b2nd?chunks=maybe", 400, "chunks"),
    ("/api/fetch/foo/ds-1d.b2nd?indices=[[1,2]]", 400, "coordinates"),
    ("/api/fetch/foo/ds-1d.b2nd?filter=x>1", 400, "filters"),
    ("/api/fetch/foo/ds-1d-fields.b2nd?field=c", 400, "no field 'c' (its fields: a, b)"),
    ("/api/fetch/foo/ds-1d.b2nd?field=a", 400, "not structured"),
    ("/api/fetch/foo/ds-hello.b2frame?field=a", 400, "not an array"),
    ("/api/fetch/foo/ds-1d-fields.b2nd?field=a&chunks=true", 400, "leave field out"),
    ("/api/chunk/foo/ds-1d.b2nd?nchunk=10", 404, "it has 10 chunks, 0..9"),
    ("/api/chunk/foo/ds-1d.b2nd?nchunk=-1", 404, "no chunk -1"),
    ("/api/chunk/foo/ds-1d.b2nd", 400, "nchunk"),
    ("/api/chunk/foo/nope.b2nd?nchunk=0", 404, "no dataset"),
    ("/api/chunk/foo/%2e%2e/x?nchunk=0", 400, "'..'"),
    ("/api/nothing", 404, "no such endpoint: /api/nothing"),
])
def test_subscriber_rejects_bad_requests_clearly(sub_host, url, status, words):
    r = httpx.get(f"http://{sub_host}{url}")
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.text


def test_subscribe_to_unknown_root_is_404(sub_host):
    r = httpx.post(f"http://{sub_host}/api/subscribe/nope")
    assert r.status_code == 404 and "no root" in r.json()["detail"], r.text


def test_publisher_never_serves_outside_its_root(services):
    if services.publisher is None:
        pytest.skip("needs the managed publisher")
    for path in ("%2e%2e/%2e%2e/etc/passwd", "..%2fsecret", "%2fetc%2fpasswd", ".hidden"):
        for endpoint in ("info", "download", "chunks"):
            r = httpx.get(f"http://{services.publisher}/api/{endpoint}/{path}?nchunks=0")
            assert r.status_code in (400, 404), (endpoint, path, r.status_code)


def test_library_errors_carry_the_explanation(sub_host):
    with pytest.raises(cat2.ServerError, match="out of range") as err:
        cat2.fetch("foo/ds-1d.b2nd", sub_host, "2000")
    assert err.value.status_code == 400
    with pytest.raises(ValueError, match="ROOT/PATH"):
        cat2.Root("foo", host=sub_host)[""]


@pytest.mark.parametrize("key", [[1, 2], np.array([1, 2]), np.arange(20) > 5, 1.5, True, None,
                                 (slice(None), None), (Ellipsis, Ellipsis)])
def test_library_refuses_selections_beyond_basic_indexing_before_asking(sub_host, key):
    """A clear IndexError naming the item, as NumPy's; before, lists and arrays gave a
    TypeError from int(), and 1.5, True and None read something else than NumPy would."""
    ds = cat2.Root("foo", host=sub_host)["ds-1d.b2nd"]
    with pytest.raises(IndexError, match="integers|not a valid selection item|only one"):
        ds[key]
    with pytest.raises(IndexError):
        cat2.fetch("foo/ds-1d.b2nd", sub_host, key if key is not None else [None])


@pytest.mark.parametrize("args, message", [
    (["show", "foo/ds-1d.b2nd[1:2:3:4]"], "malformed selection"),
    (["show", "foo/ds-1d.b2nd[..., ...]"], "only one '...'"),
    (["show", "foo/ds-1d.b2nd[1:3"], "malformed selection in 'foo/ds-1d.b2nd[1:3'"),
    (["show", "foo/ds-1d.b2nd[1:3]]"], "malformed selection"),
    (["show", "foo/nope.b2nd"], "no dataset 'nope.b2nd'"),
    (["list", "nope"], "no root named 'nope'"),
    (["subscribe", "nope"], "no root named 'nope'"),
    (["info", "foo"], "is not ROOT/PATH"),
    (["show", "foo/../secret.b2nd"], "no '..'"),
    (["info", "/etc/passwd"], "'/etc/passwd' is not ROOT/PATH"),
    (["url", "../.."], "invalid root name '..'"),
    (["url", "foo/../x"], "no '..'"),
])
def test_cli_errors_are_one_line_and_nonzero(sub_host, args, message):
    done = cat2cli("--host", sub_host, *args)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("cat2cli: error: ") and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, \
        done.stderr


def test_publisher_refuses_huge_chunk_lists_without_expanding_them(services):
    if services.publisher is None:
        pytest.skip("needs the managed publisher")
    for nchunks in ("0-999999999999", "0,0-3,1-2,1-2,1-2"):
        r = httpx.get(f"http://{services.publisher}/api/chunks/ds-1d.b2nd",
                      params={"nchunks": nchunks})
        assert r.status_code == 400, r.text
        assert "chunk" in r.json()["detail"], r.text


def test_huge_request_heads_are_refused_as_they_arrive(services):
    """A 20 MB URL, or 20 MB of headers, sent to the publisher and the subscriber: the
    connection ends at 64 kB, and the service goes on answering others."""
    if services.publisher is None:
        pytest.skip("needs the managed services")
    for address in (services.publisher, services.subscriber):
        host, port = address.rsplit(":", 1)
        for head in (b"GET /api/" + b"a" * (20 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"GET /api/roots HTTP/1.1\r\nHost: x\r\n"
                     + b"X-Junk: " + b"b" * (20 << 20) + b"\r\n\r\n"):
            with socket.create_connection((host, int(port)), timeout=30) as conn:
                answer = b""
                with contextlib.suppress(OSError):  # (reset while still sending: refused)
                    conn.sendall(head)
                    answer = conn.recv(100)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer
        assert httpx.get(f"http://{address}/health").status_code == 200


@pytest.mark.parametrize("args, message", [
    (["--host", "localhost:abc", "roots"], "expected HOST:PORT"),
    (["--host", "localhost:99999", "roots"], "expected HOST:PORT"),
    (["--host", "", "roots"], "expected HOST:PORT"),
    (["--host", "http://localhost:99999", "roots"], "bad subscriber URL"),
])
def test_cli_refuses_bad_subscriber_addresses(args, message):
    done = cat2cli(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("service, args, conf, message", [
    ("publisher", ["../evil", "."], "", "invalid root name '../evil'"),
    ("broker", ["--http", "localhost:70000"], "", "port 0 to 65535"),
    ("subscriber", ["--broker", "localhost:abc"], "", "expected HOST:PORT"),
    ("broker", [], "[broker]\nstatedir = 5\n", "statedir must be a string"),
    ("broker", [], "broker = 5\n", "[broker] must be a table"),
])
def test_services_refuse_bad_settings_at_start(tmp_path, service, args, conf, message):
    (tmp_path / "c.toml").write_text(conf)
    done = subprocess.run([sys.executable, "-m", f"caterva2.services.{service}",
                           "--conf", str(tmp_path / "c.toml"),
                           *(["--http", "127.0.0.1:0"] if "--http" not in args else []), *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_cli_pointed_at_something_else(tmp_path):
    """A server that is not a subscriber (here a plain file server) gets a one-line error."""
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "roots").write_text("<html>a web page</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host = f"127.0.0.1:{server.server_address[1]}"
        try:
            roots, listing = cat2cli("--host", host, "roots"), cat2cli("--host", host, "list", "foo")
        finally:
            server.shutdown()
    assert roots.returncode == 1 and "not JSON: is it a Caterva2 subscriber?" in roots.stderr, \
        roots.stderr
    assert listing.returncode == 1 and "not an answer of a Caterva2 service" in listing.stderr, \
        listing.stderr
    for done in (roots, listing):
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cli_with_no_subscriber_running():
    """The README's ``cat2cli --host localhost:9999 roots``, at an address known to be closed."""
    with closed_port_address() as address:
        done = cat2cli("--host", address, "roots")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip() == (f"cat2cli: error: cannot reach the subscriber at "
                                   f"{address} (is cat2sub running?)")


def test_error_texts_for_clients_name_no_server_directories(tmp_path):
    from caterva2.roots.base import without_paths

    error = OSError(f"cannot open {tmp_path / 'pub' / 'x.b2nd'} (cache at {tmp_path}/c/y)")
    assert without_paths(error, tmp_path / "pub", tmp_path) == "cannot open x.b2nd (cache at c/y)"
