"""The broker's API shape, in process: the registry of roots, the rule that a root name
belongs to the publisher (key) that registered it first, tokens, events reaching listeners
from the right publisher only, liveness, limits, errors as JSON.

The broker asks a registered publisher whether it still serves its root before giving
the name to another; here that question goes to a fake network (``probe_transport``),
which answers as a live publisher would, or fails as an unreachable one does.
"""
from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from caterva2.models import PUBLISHER_KEY_HEADER, ChangeEvent, RootEvent
from caterva2.services.broker import QUEUE_LIMIT, BrokerOptions, EventHub, Liveness, build_app
from caterva2.services.broker.bindings import Bindings


@pytest.fixture
def anyio_backend():
    return "asyncio"


class FakePublishers:
    """The network as the broker's liveness probe sees it: ``live`` maps an address to
    the root name its publisher answers with; other addresses do not answer."""

    def __init__(self) -> None:
        self.live: dict[str, str] = {}
        self.asked: list[str] = []

    def transport(self) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            address = f"{request.url.host}:{request.url.port}"
            self.asked.append(address)
            if address not in self.live or request.url.path != "/api/root":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(200, json={"name": self.live[address]})

        return httpx.MockTransport(answer)


@contextlib.asynccontextmanager
async def running(app):
    """A client of ``app``, served in process while its lifespan runs."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            yield client


@pytest.fixture
def publishers():
    return FakePublishers()


@pytest.fixture
def broker_app(tmp_path, publishers):
    return build_app(tmp_path / "bro", probe_transport=publishers.transport())


def as_publisher(key: str, token: str | None = None) -> dict[str, str]:
    """The headers of a publisher with ``key`` (and the broker's ``token``)."""
    headers = {PUBLISHER_KEY_HEADER: key}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def register(client, name: str, http: str, key: str = "key-1") -> httpx.Response:
    return await client.post("/api/roots", json={"name": name, "http": http},
                             headers=as_publisher(key))


@pytest.mark.anyio
async def test_a_registered_root_is_listed_and_survives_a_restart(tmp_path, broker_app):
    async with running(broker_app) as client:
        r = await register(client, "foo", "pub1:8001")
        assert (r.status_code, r.json()) == (200, "Ok")
        r = await client.get("/api/roots")
        assert r.json() == {"foo": {"name": "foo", "http": "pub1:8001", "reachable": True}}
    saved = json.loads((tmp_path / "bro" / "roots.json").read_text())
    assert saved == {"foo": {"name": "foo", "http": "pub1:8001"}}
    bindings = json.loads((tmp_path / "bro" / "bindings.json").read_text())
    assert list(bindings) == ["foo"] and "key-1" not in json.dumps(bindings)  # (a digest)
    async with running(build_app(tmp_path / "bro")) as client:  # a restarted broker
        assert (await client.get("/api/roots")).json()["foo"]["http"] == "pub1:8001"
        r = await register(client, "foo", "pub2:8001", key="key-2")
        assert r.status_code == 409 and "release foo" in r.json()["detail"], r.text


@pytest.mark.anyio
async def test_a_name_is_its_first_publishers_whether_it_answers_or_not(broker_app,
                                                                        publishers):
    async with running(broker_app) as client:
        await register(client, "foo", "pub1:8001")
        for live in (True, False):
            if live:
                publishers.live["pub1:8001"] = "foo"
            else:
                publishers.live.clear()
            r = await register(client, "foo", "pub2:8001", key="key-2")
            assert r.status_code == 409, r.text
            assert "belongs to another publisher (first registered from pub1:8001" \
                in r.json()["detail"]
            assert (await client.get("/api/roots")).json()["foo"]["http"] == "pub1:8001"
        assert publishers.asked == []  # (no need to ask anyone)


@pytest.mark.parametrize("first_answers", ["nothing", "another root"])
@pytest.mark.anyio
async def test_its_publisher_restarted_elsewhere_gets_its_name_back(
        broker_app, publishers, first_answers):
    if first_answers == "another root":  # a publisher of another root now at that address
        publishers.live["pub1:8001"] = "bar"
    async with running(broker_app) as client:
        await register(client, "foo", "pub1:8001")
        r = await register(client, "foo", "pub2:8001")  # (the same key)
        assert (r.status_code, r.json()) == (200, "Ok")
        assert publishers.asked == ["pub1:8001"]
        assert (await client.get("/api/roots")).json()["foo"]["http"] == "pub2:8001"


@pytest.mark.anyio
async def test_two_live_publishers_with_one_key_are_refused(broker_app, publishers):
    """Two publishers sharing a state directory (and so a key): the second is refused while
    the first still serves the root."""
    publishers.live["pub1:8001"] = "foo"
    async with running(broker_app) as client:
        await register(client, "foo", "pub1:8001")
        r = await register(client, "foo", "pub2:8001")
        assert r.status_code == 409 and "already published at pub1:8001" in r.json()["detail"]
        assert (await client.get("/api/roots")).json()["foo"]["http"] == "pub1:8001"
        r = await register(client, "foo", "pub1:8001")  # the first one again: no conflict
        assert r.status_code == 200 and publishers.asked == ["pub1:8001"]


@pytest.mark.anyio
async def test_registrations_and_changes_reach_every_listener(broker_app):
    async with running(broker_app) as client:
        hub = broker_app.state.hub
        with hub.listener() as first, hub.listener() as second:
            await register(client, "foo", "pub1:8001")
            change = {"root": "foo", "changed": {"a.b2nd": "v2"}, "deleted": ["b.b2nd"]}
            r = await client.post("/api/events", json=change, headers=as_publisher("key-1"))
            assert (r.status_code, r.json()) == (200, "Ok")
            for queue in (first, second):
                registered = RootEvent.model_validate_json(queue.get_nowait())
                assert registered.root.name == "foo" and registered.root.http == "pub1:8001"
                changed = ChangeEvent.model_validate_json(queue.get_nowait())
                assert changed.changed == {"a.b2nd": "v2"} and changed.deleted == ["b.b2nd"]
                assert queue.empty()


@pytest.mark.parametrize("headers, status, words", [
    ({}, 401, "no publisher key"),
    (as_publisher("key-2"), 403, "only the publisher of root 'foo'"),
])
@pytest.mark.anyio
async def test_events_only_from_the_roots_publisher(broker_app, headers, status, words):
    async with running(broker_app) as client:
        await register(client, "foo", "pub1:8001")
        with broker_app.state.hub.listener() as events:
            r = await client.post("/api/events", json={"root": "foo", "deleted": ["a.b2nd"]},
                                  headers=headers)
            assert r.status_code == status and words in r.json()["detail"], r.text
            assert events.empty()  # nothing forwarded


@pytest.mark.anyio
async def test_a_broker_with_a_token_requires_it(tmp_path):
    app = build_app(tmp_path / "bro", BrokerOptions(token="s3cret"))
    body = {"name": "foo", "http": "pub1:8001"}
    async with running(app) as client:
        for headers, words in (
                (as_publisher("key-1"), "requires its token"),
                (as_publisher("key-1", token="wrong"), "wrong broker token"),
                ({"Authorization": "Basic czNjcmV0"}, "requires its token")):
            r = await client.post("/api/roots", json=body, headers=headers)
            assert r.status_code == 401 and words in r.json()["detail"], r.text
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get("/api/roots")).json() == {}  # nothing registered
        r = await client.post("/api/roots", json=body, headers=as_publisher("key-1", "s3cret"))
        assert r.status_code == 200, r.text


@pytest.mark.anyio
async def test_a_released_name_goes_to_the_next_publisher_at_once(tmp_path, broker_app):
    """The admin tool's release, on the bindings file of a running broker."""
    async with running(broker_app) as client:
        await register(client, "foo", "pub1:8001")
        assert (await register(client, "foo", "pub2:8001", key="key-2")).status_code == 409
        assert Bindings(tmp_path / "bro").release("foo") is not None  # (as cat2admin does)
        assert (await register(client, "foo", "pub2:8001", key="key-2")).status_code == 200
        assert (await register(client, "foo", "pub1:8001")).status_code == 409


@pytest.mark.anyio
async def test_silent_publishers_are_listed_unreachable_then_dropped(tmp_path, publishers):
    liveness = Liveness(unreachable_after=0.3, drop_after=0.6)
    app = build_app(tmp_path / "bro", BrokerOptions(liveness=liveness),
                    probe_transport=publishers.transport())
    publishers.live["pub1:8001"] = "foo"
    async with running(app) as client:
        await register(client, "foo", "pub1:8001")
        await register(client, "bar", "pub2:8001", key="key-2")  # (never answers)

        async def listing() -> dict:
            return {n: r["reachable"] for n, r in (await client.get("/api/roots")).json().items()}

        assert await listing() == {"foo": True, "bar": True}
        for _ in range(40):  # (at most 2 s)
            await asyncio.sleep(0.05)
            if await listing() == {"foo": True, "bar": False}:
                break
        assert await listing() == {"foo": True, "bar": False}
        for _ in range(40):
            await asyncio.sleep(0.05)
            if await listing() == {"foo": True}:
                break
        assert await listing() == {"foo": True}  # (probed: it answers)
        assert "bar" not in json.loads((tmp_path / "bro" / "roots.json").read_text())
        r = await register(client, "bar", "pub3:8001")  # its name is still its publisher's
        assert r.status_code == 409, r.text
        assert (await register(client, "bar", "pub2:8001", key="key-2")).status_code == 200
        assert await listing() == {"foo": True, "bar": True}


def test_a_listener_too_slow_to_keep_up_is_dropped():
    hub = EventHub()
    with hub.listener() as slow:
        for n in range(QUEUE_LIMIT):
            hub.publish(f"event {n}")
        assert slow in hub.queues  # full, not yet too slow
        hub.publish("one too many")  # (once raised QueueFull at the poster: a 500)
        assert slow not in hub.queues
        kept = [slow.get_nowait() for _ in range(QUEUE_LIMIT)]
        assert kept == [f"event {n}" for n in range(QUEUE_LIMIT)]
        assert slow.get_nowait() is None  # the end: reconnect and resync
        hub.publish("later")
        assert slow.empty()


@pytest.mark.parametrize("method, url, body, words", [
    ("POST", "/api/roots", {"name": "../x", "http": "pub1:8001"}, "invalid root name"),
    ("POST", "/api/roots", {"name": "a/b", "http": "pub1:8001"}, "invalid root name"),
    ("POST", "/api/roots", {"name": "x" * 101, "http": "pub1:8001"}, "1 to 100"),
    ("POST", "/api/roots", {"name": "foo"}, "http"),
    ("POST", "/api/roots", {"name": "foo", "http": "127.0.0.1:1/internal/admin?x="},
     "bad publisher address"),
    ("POST", "/api/roots", {"name": "foo", "http": "user@127.0.0.1:1"},
     "bad publisher address"),
    ("POST", "/api/roots", {"name": "foo", "http": "ftp://pub1:8001"}, "only http and https"),
    ("POST", "/api/roots", "not json", "invalid"),
    ("POST", "/api/events", {"changed": {}}, "root"),
    ("POST", "/api/events", {"root": "foo", "changed": ["a"]}, "changed"),
    ("POST", "/api/events", {"root": "foo", "deleted": ["../x"]}, "no '..'"),
    ("POST", "/api/events", {"root": "foo", "deleted": ["a" * 1025]}, "longer than 1024"),
    ("POST", "/api/events", {"root": "foo", "deleted": [f"{n}" for n in range(1001)]},
     "more than 1000"),
    ("POST", "/api/events", {"root": "foo", "changed": {"a": "v" * 257}}, "version tag"),
])
@pytest.mark.anyio
async def test_bad_input_is_a_400_with_a_json_detail(broker_app, method, url, body, words):
    async with running(broker_app) as client:
        headers = as_publisher("key-1")
        if isinstance(body, str):
            r = await client.request(method, url, content=body,
                                     headers={"content-type": "application/json", **headers})
        else:
            r = await client.request(method, url, json=body, headers=headers)
        assert r.status_code == 400, r.text
        assert words in r.json()["detail"]
        assert len(r.content) < 1000  # (the input does not come back whole)
        assert (await client.get("/api/roots")).json() == {}  # nothing registered


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.anyio
async def test_a_body_too_large_is_a_413_before_it_is_read(broker_app, chunked):
    name = b'{"name": "' + b"x" * (5 * 2**20) + b'", "http": "pub1:8001"}'
    async with running(broker_app) as client:
        if chunked:  # (no Content-Length: stopped as it arrives)
            async def pieces():
                for start in range(0, len(name), 2**16):
                    yield name[start:start + 2**16]
            content = pieces()
        else:
            content = name
        r = await client.post("/api/roots", content=content, headers={
            "content-type": "application/json", **as_publisher("key-1")})
        assert r.status_code == 413, r.text
        assert r.json()["detail"].startswith("request body too large: this service takes at "
                                             "most 2 MiB"), r.text
        assert (await client.get("/api/roots")).json() == {}


@pytest.mark.anyio
async def test_unknown_urls_and_methods_are_json_errors(broker_app):
    async with running(broker_app) as client:
        r = await client.get("/api/nothing")
        assert r.status_code == 404
        assert r.json()["detail"] == ("no such endpoint: /api/nothing "
                                      "(the API is described at /docs)")
        r = await client.delete("/api/roots")
        assert r.status_code == 405 and "DELETE is not allowed" in r.json()["detail"]
