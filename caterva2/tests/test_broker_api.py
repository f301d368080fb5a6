"""The broker's API shape, in process: the registry of roots, the rule that a root name
belongs to one live publisher, events reaching listeners, errors as JSON.

The broker asks a registered publisher whether it still serves its root before giving
the name to another; here that question goes to a fake network (``probe_transport``),
which answers as a live publisher would, or fails as an unreachable one does.
"""
from __future__ import annotations

import contextlib
import json

import httpx
import pytest

from caterva2.models import ChangeEvent, RootEvent
from caterva2.services.broker import QUEUE_LIMIT, EventHub, build_app


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


@pytest.mark.anyio
async def test_a_registered_root_is_listed_and_survives_a_restart(tmp_path, broker_app):
    async with running(broker_app) as client:
        r = await client.post("/api/roots", json={"name": "foo", "http": "pub1:8001"})
        assert (r.status_code, r.json()) == (200, "Ok")
        r = await client.get("/api/roots")
        assert r.json() == {"foo": {"name": "foo", "http": "pub1:8001"}}
    saved = json.loads((tmp_path / "bro" / "roots.json").read_text())
    assert saved == {"foo": {"name": "foo", "http": "pub1:8001"}}
    async with running(build_app(tmp_path / "bro")) as client:  # a restarted broker
        assert (await client.get("/api/roots")).json() == saved


@pytest.mark.anyio
async def test_a_second_live_publisher_of_a_name_is_refused(broker_app, publishers):
    publishers.live["pub1:8001"] = "foo"
    async with running(broker_app) as client:
        await client.post("/api/roots", json={"name": "foo", "http": "pub1:8001"})
        r = await client.post("/api/roots", json={"name": "foo", "http": "pub2:8001"})
        assert r.status_code == 409
        assert "already published at pub1:8001" in r.json()["detail"]
        assert publishers.asked == ["pub1:8001"]  # the first publisher was asked
        assert (await client.get("/api/roots")).json()["foo"]["http"] == "pub1:8001"
        # The first publisher registering again is not a conflict: nobody is asked.
        r = await client.post("/api/roots", json={"name": "foo", "http": "pub1:8001"})
        assert r.status_code == 200 and publishers.asked == ["pub1:8001"]


@pytest.mark.parametrize("first_answers", ["nothing", "another root"])
@pytest.mark.anyio
async def test_a_name_is_taken_over_once_its_publisher_no_longer_serves_it(
        broker_app, publishers, first_answers):
    if first_answers == "another root":  # a publisher of another root now at that address
        publishers.live["pub1:8001"] = "bar"
    async with running(broker_app) as client:
        await client.post("/api/roots", json={"name": "foo", "http": "pub1:8001"})
        r = await client.post("/api/roots", json={"name": "foo", "http": "pub2:8001"})
        assert (r.status_code, r.json()) == (200, "Ok")
        assert publishers.asked == ["pub1:8001"]
        assert (await client.get("/api/roots")).json()["foo"]["http"] == "pub2:8001"


@pytest.mark.anyio
async def test_registrations_and_changes_reach_every_listener(broker_app):
    async with running(broker_app) as client:
        hub = broker_app.state.hub
        with hub.listener() as first, hub.listener() as second:
            await client.post("/api/roots", json={"name": "foo", "http": "pub1:8001"})
            change = {"root": "foo", "changed": {"a.b2nd": "v2"}, "deleted": ["b.b2nd"]}
            r = await client.post("/api/events", json=change)
            assert (r.status_code, r.json()) == (200, "Ok")
            for queue in (first, second):
                registered = RootEvent.model_validate_json(queue.get_nowait())
                assert registered.root.name == "foo" and registered.root.http == "pub1:8001"
                changed = ChangeEvent.model_validate_json(queue.get_nowait())
                assert changed.changed == {"a.b2nd": "v2"} and changed.deleted == ["b.b2nd"]
                assert queue.empty()


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
    ("POST", "/api/roots", {"name": "foo"}, "http"),
    ("POST", "/api/roots", "not json", "invalid"),
    ("POST", "/api/events", {"changed": {}}, "root"),
    ("POST", "/api/events", {"root": "foo", "changed": ["a"]}, "changed"),
])
@pytest.mark.anyio
async def test_bad_input_is_a_400_with_a_json_detail(broker_app, method, url, body, words):
    async with running(broker_app) as client:
        if isinstance(body, str):
            r = await client.request(method, url, content=body,
                                     headers={"content-type": "application/json"})
        else:
            r = await client.request(method, url, json=body)
        assert r.status_code == 400, r.text
        assert words in r.json()["detail"]
        assert (await client.get("/api/roots")).json() == {}  # nothing registered


@pytest.mark.anyio
async def test_unknown_urls_and_methods_are_json_errors(broker_app):
    async with running(broker_app) as client:
        r = await client.get("/api/nothing")
        assert r.status_code == 404
        assert r.json()["detail"] == ("no such endpoint: /api/nothing "
                                      "(the API is described at /docs)")
        r = await client.delete("/api/roots")
        assert r.status_code == 405 and "DELETE is not allowed" in r.json()["detail"]
