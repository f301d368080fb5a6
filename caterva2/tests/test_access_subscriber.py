"""Users at the subscriber: with ``--require-login`` every endpoint needs a user's API key,
users come and go without a restart, and per-root rules say who may read and subscribe."""
import subprocess
import sys

import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.tests.harness import cat2admin, wait_until
from caterva2.tools import make_root_example
from caterva2.users import Users

DATASET = "foo/dir1/ds-2d.b2nd"


@pytest.fixture
def roots(stack, tmp_path):
    """Roots ``foo`` and ``bar`` published (the example root twice)."""
    source = make_root_example.make(tmp_path / "root-example")
    stack.publisher("foo", source)
    stack.publisher("bar", source)
    return source


def start_subscriber(stack, tmp_path, conf: str = "", login: bool = True):
    conf_file = tmp_path / "caterva2.toml"
    conf_file.write_text(conf)
    args = ["--conf", str(conf_file)] + (["--require-login"] if login else [])
    sub = stack.subscriber(args=args)
    return sub


def cli(sub, *args, key=None):
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    if key:
        env["CATERVA2_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "caterva2.cli", "--host", sub.address,
                           *args], capture_output=True, text=True, timeout=60, env=env)


def test_an_open_subscriber_says_so(stack, roots, tmp_path):
    sub = start_subscriber(stack, tmp_path, login=False)
    assert "cat2sub: access: open (no login required" in sub.log_tail(50)
    wait_until(lambda: "foo" in cat2.get_roots(sub.address), what="root foo")
    assert cat2.subscribe("foo", sub.address) == "Ok"


def test_every_endpoint_needs_a_user(stack, roots, tmp_path):
    sub = start_subscriber(stack, tmp_path)
    assert "cat2sub: access: login required (0 users)" in sub.log_tail(50)
    base = f"http://{sub.address}"
    for method, path in [("GET", "/api/roots"), ("POST", "/api/subscribe/foo"),
                         ("GET", "/api/list/foo"), ("GET", f"/api/info/{DATASET}"),
                         ("GET", f"/api/fetch/{DATASET}"), ("GET", f"/files/{DATASET}"),
                         ("GET", f"/api/chunk/{DATASET}?nchunk=0"),
                         ("GET", "/api/cache"), ("GET", "/"), ("GET", "/metrics"),
                         ("GET", "/docs"), ("GET", "/openapi.json")]:
        r = httpx.request(method, base + path)
        assert r.status_code == 401, (path, r.status_code)
        assert "requires a login" in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.request(method, base + path, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "not valid" in r.json()["detail"], path
    assert httpx.get(base + "/health").status_code == 200  # for liveness probes

    done = cli(sub, "roots")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cat2cli: error: this subscriber "
                                                   "requires a login"), done.stderr
    assert "CATERVA2_API_KEY" in lines[0] and "adduser" in lines[0]
    done = cli(sub, "roots", key="wrong")
    assert done.returncode == 1 and "not valid" in done.stderr


def admin(sub, *args) -> str:
    """``cat2admin --statedir SUBSCRIBER_STATEDIR ARGS``'s last line; it must succeed."""
    done = cat2admin("--statedir", sub.statedir, *args)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_users_come_and_go_without_a_restart(stack, roots, tmp_path):
    sub = start_subscriber(stack, tmp_path)
    key = admin(sub, "adduser", "alice")  # (the key is the last line)
    assert admin(sub, "listusers") == "alice"
    done = cat2admin("--statedir", sub.statedir, "adduser", "alice")
    assert done.returncode == 1 and "exists already" in done.stderr
    done = cli(sub, "subscribe", "foo", key=key)
    assert done.returncode == 0, done.stderr
    with cat2.Client(sub.address, api_key=key) as client:
        wait_until(lambda: "foo" in client.roots(), what="root foo")
        ds = client.get_dataset(DATASET)
        np.testing.assert_array_equal(ds[1:3], ds[:][1:3])  # data answers carry the key
        assert client.download(DATASET, tmp_path / "out").exists()

        new = admin(sub, "newkey", "alice")  # the old key stops working at once
        with pytest.raises(cat2.ServerError) as error:
            client.list("foo")
        assert error.value.status_code == 401
    with cat2.Client(sub.address, api_key=new) as client:
        assert "dir1/ds-2d.b2nd" in client.list("foo")
    admin(sub, "deluser", "alice")
    assert admin(sub, "listusers").startswith("no users")
    with cat2.Client(sub.address, api_key=new) as client, \
            pytest.raises(cat2.ServerError) as error:
        client.roots()
    assert error.value.status_code == 401


def test_the_key_comes_from_the_environment(stack, roots, tmp_path, monkeypatch):
    sub = start_subscriber(stack, tmp_path)
    key = Users(sub.statedir).add("bob")
    monkeypatch.setenv("CATERVA2_API_KEY", key)
    with cat2.Client(sub.address) as client:
        wait_until(lambda: "foo" in client.roots(), what="root foo")
        assert client.subscribe("foo") == "Ok"
    done = cli(sub, "show", f"{DATASET}[0, :3]", key=key)
    assert done.returncode == 0, done.stderr


ACCESS = """
[access]
subscribe = ["admin"]

[access.foo]
read = ["alice", "admin"]

[access.bar]
read = ["*"]
"""


def test_per_root_rules(stack, roots, tmp_path):
    sub = start_subscriber(stack, tmp_path, ACCESS)
    users = Users(sub.statedir)
    keys = {name: users.add(name) for name in ("admin", "alice", "bob")}
    clients = {name: cat2.Client(sub.address, api_key=key) for name, key in keys.items()}
    try:
        admin, alice, bob = clients["admin"], clients["alice"], clients["bob"]
        wait_until(lambda: {"foo", "bar"} <= set(admin.roots()), what="both roots")
        for client in (alice, bob):  # only admin may subscribe
            with pytest.raises(cat2.ServerError) as error:
                client.subscribe("bar")
            assert error.value.status_code == 403
            assert "may not subscribe" in str(error.value)
        assert admin.subscribe("foo") == admin.subscribe("bar") == "Ok"

        assert set(bob.roots()) == {"bar"}  # foo: not readable by bob, not listed
        assert set(alice.roots()) == {"foo", "bar"}
        np.testing.assert_array_equal(alice.fetch(DATASET, "0"), admin.fetch(DATASET, "0"))
        for call in (lambda: bob.list("foo"), lambda: bob.info(DATASET),
                     lambda: bob.fetch(DATASET, "0"), lambda: bob.download(DATASET, tmp_path),
                     lambda: bob.url("foo")):
            with pytest.raises(cat2.ServerError) as error:
                call()
            assert error.value.status_code == 403, error.value
            assert "user 'bob' may not read root 'foo'" in str(error.value)
        assert "dir1/ds-2d.b2nd" in bob.list("bar")
        with pytest.raises(cat2.ServerError) as error:  # nor drop what others read
            bob.unsubscribe("bar")
        assert error.value.status_code == 403
        assert "dir1/ds-2d.b2nd" in alice.list("bar")
    finally:
        for client in clients.values():
            client.close()


def test_malformed_rules_stop_the_subscriber_with_one_line(stack, tmp_path):
    conf = tmp_path / "caterva2.toml"
    for text, said in [('[access.foo]\nread = "alice"\n', "must be a list of user names"),
                       ('[access.foo]\nwrite = ["alice"]\n', "unknown keys ['write']"),
                       ('[subscriber]\nrequire_login = "yes"\n', "true or false")]:
        conf.write_text(text)
        done = subprocess.run([sys.executable, "-m", "caterva2.services.subscriber",
                               "--conf", str(conf), "--http", "127.0.0.1:0",
                               "--statedir", str(tmp_path / "s")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
