"""The publisher's API shape, in process, over a copy of the example root: listing, index
and metadata (with ETags), chunk streams, downloads, and its errors as JSON.

The publisher registers at a broker while it runs; here its broker is a fake that records
what it is told (``broker_transport``), or the real broker application, in process.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json

import blosc2
import httpx
import numpy as np
import pytest

from caterva2 import wire
from caterva2.models import ChangeEvent, DatasetEntry, RootEvent
from caterva2.roots.directory import DirectoryRoot
from caterva2.services import broker
from caterva2.services.publisher import PublisherSettings, build_app
from caterva2.tools import make_root_example

EXAMPLE = ["README.md", "dir1/ds-2d.b2nd", "dir1/ds-3d.b2nd", "dir2/ds-4d.b2nd",
           "ds-1d-b.b2nd", "ds-1d-fields.b2nd", "ds-1d.b2nd", "ds-hello.b2frame",
           "ds-sc-attr.b2nd"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


class FakeBroker:
    """Answers "Ok" to everything, and keeps what it was posted: ``[(path, json)]``."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, object]] = []

    def transport(self) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            self.posted.append((request.url.path, json.loads(request.content)))
            return httpx.Response(200, json="Ok")

        return httpx.MockTransport(answer)


@contextlib.asynccontextmanager
async def running(app, base_url: str = "http://publisher"):
    """A client of ``app``, served in process while its lifespan runs."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


async def wait_for(condition, what: str, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def example(tmp_path):
    return make_root_example.make(tmp_path / "root")


@pytest.fixture
def fake_broker():
    return FakeBroker()


@pytest.fixture
def publisher_app(tmp_path, example, fake_broker):
    settings = PublisherSettings("foo", "pub1:8001", "broker:8000", tmp_path / "pub")
    root = DirectoryRoot(example, settings.statedir)
    return build_app(settings, root, broker_transport=fake_broker.transport())


@pytest.fixture
async def client(publisher_app):
    async with running(publisher_app) as client:
        yield client


def stored_chunk(example, path: str, n: int) -> bytes:
    obj = blosc2.open(str(example / path))
    return (obj.schunk if isinstance(obj, blosc2.NDArray) else obj).get_chunk(n)


@pytest.mark.anyio
async def test_root_name_and_listing(client):
    root = (await client.get("/api/root")).json()
    assert root["name"] == "foo"
    assert root["hops"] == []  # a directory is its own origin (see caterva2.provenance)
    assert len(root["publisher_id"]) == 16  # a fingerprint of the key, never the key
    assert (await client.get("/api/list")).json() == EXAMPLE


@pytest.mark.anyio
async def test_it_registers_and_announces_every_dataset(client, fake_broker, tmp_path):
    await wait_for(lambda: len(fake_broker.posted) >= 2, "registration and announcement")
    (where, registration), (where_event, event) = fake_broker.posted[:2]
    assert where == "/api/roots" and registration == {"name": "foo", "http": "pub1:8001"}
    assert where_event == "/api/events"
    change = ChangeEvent.model_validate(event)
    assert change.root == "foo" and sorted(change.changed) == EXAMPLE and not change.deleted
    state = tmp_path / "pub" / "announced.json"  # (written once the broker took the event)
    await wait_for(state.exists, "announced.json")
    announced = json.loads(state.read_text())
    assert announced == change.changed


@pytest.mark.anyio
async def test_index_holds_every_entry_and_is_cached_by_etag(client):
    r = await client.get("/api/index")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    datasets = r.json()["datasets"]
    assert sorted(datasets) == EXAMPLE
    for path, entry in datasets.items():
        assert set(entry) == {"version", "meta"}, path  # no "error" for readable ones
        meta = DatasetEntry.model_validate(entry).meta
        assert meta is not None and meta.schunk.nchunks >= 1, path
    etag = r.headers["etag"]
    again = await client.get("/api/index", headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)


@pytest.mark.anyio
async def test_info_of_each_kind(client):
    r = await client.get("/api/info/ds-1d.b2nd")
    entry = r.json()
    assert set(entry) == {"version", "meta"} and r.headers["etag"] == entry["version"]
    meta = entry["meta"]
    assert (meta["kind"], meta["dtype"], meta["shape"], meta["chunks"], meta["blocks"]) == \
        ("ndarray", "int64", [1000], [100], [10])
    assert meta["schunk"]["nchunks"] == 10 and meta["schunk"]["cbytes"] > 0
    frame = (await client.get("/api/info/ds-hello.b2frame")).json()["meta"]
    assert frame["kind"] == "frame" and frame["schunk"]["nbytes"] == 1200
    readme = (await client.get("/api/info/README.md")).json()["meta"]
    assert readme["kind"] == "file" and readme["size"] == len(make_root_example.README)
    attrs = (await client.get("/api/info/ds-sc-attr.b2nd")).json()["meta"]["schunk"]["vlmeta"]
    assert attrs == {"a": 1, "b": "foo", "c": 123.456}
    again = await client.get("/api/info/ds-1d.b2nd", headers={"If-None-Match": entry["version"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.anyio
async def test_chunks_come_as_stored_in_records(client, example):
    version = (await client.get("/api/info/dir1/ds-2d.b2nd")).json()["version"]
    r = await client.get("/api/chunks/dir1/ds-2d.b2nd",
                         params={"nchunks": "0-2,5", "version": version})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == wire.CHUNKS_MEDIA_TYPE
    assert r.headers["etag"] == version
    assert int(r.headers["content-length"]) == len(r.content)
    records = [(n, bytes(chunk))
               for n, chunk in wire.read_records(io.BytesIO(r.content), 1 << 20)]
    assert records == [(n, stored_chunk(example, "dir1/ds-2d.b2nd", n)) for n in (0, 1, 2, 5)]


@pytest.mark.anyio
async def test_digests_are_those_of_the_stored_chunks(client, example):
    version = (await client.get("/api/info/dir1/ds-2d.b2nd")).json()["version"]
    r = await client.get("/api/digests/dir1/ds-2d.b2nd", params={"version": version})
    assert r.status_code == 200 and r.headers["etag"] == version, r.text
    digests = np.frombuffer(r.content, dtype="<u8").tolist()
    assert digests == [wire.chunk_digest(stored_chunk(example, "dir1/ds-2d.b2nd", n))
                       for n in range(8)]
    stale = await client.get("/api/digests/dir1/ds-2d.b2nd", params={"version": "old"})
    assert stale.status_code == 412 and "not current" in stale.json()["detail"]


@pytest.mark.anyio
async def test_chunks_of_an_ordinary_file_come_from_its_compressed_copy(client):
    r = await client.get("/api/chunks/README.md", params={"nchunks": "0"})
    [(n, chunk)] = list(wire.read_records(io.BytesIO(r.content), 1 << 21))
    assert n == 0 and blosc2.decompress2(bytes(chunk)) == make_root_example.README.encode()


@pytest.mark.parametrize("url, status, words", [
    ("/api/chunks/ds-1d.b2nd?nchunks=0&version=not-this-one", 412, "not current"),
    ("/api/chunks/ds-1d.b2nd?nchunks=x", 400, "malformed chunk list"),
    ("/api/chunks/ds-1d.b2nd?nchunks=0-99", 400, "chunk numbers must be in 0..9"),
    ("/api/chunks/ds-1d.b2nd?nchunks=1,1,1,1,1,1,1,1,1,1,1", 400, "more chunks"),
    ("/api/chunks/ds-1d.b2nd", 400, "nchunks"),
    ("/api/chunks/nope.b2nd?nchunks=0", 404, "no dataset 'nope.b2nd' in root 'foo'"),
    ("/api/info/nope.b2nd", 404, "no dataset"),
    ("/api/download/nope.b2nd", 404, "no dataset"),
    ("/api/info/dir1/%2e%2e/%2e%2e/etc/passwd", 400, "'..'"),
    ("/api/chunks/%2e%2e/x.b2nd?nchunks=0", 400, "'..'"),
    ("/api/download/dir1/%2e%2e/ds-1d.b2nd", 400, "'..'"),
    ("/api/info//etc/passwd", 400, "must be relative"),
    ("/api/nothing", 404, "no such endpoint: /api/nothing"),
])
@pytest.mark.anyio
async def test_bad_requests_get_a_json_detail(client, url, status, words):
    r = await client.get(url)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


@pytest.mark.anyio
async def test_an_unreadable_dataset_is_listed_with_its_error(client, example):
    (example / "bad.b2nd").write_bytes(b"not Blosc2 at all")
    entry = (await client.get("/api/info/bad.b2nd")).json()
    assert entry["meta"] is None and "not readable as Blosc2" in entry["error"]
    assert str(example) not in entry["error"]  # no server path
    index = (await client.get("/api/index")).json()["datasets"]
    assert index["bad.b2nd"] == entry and "error" not in index["ds-1d.b2nd"]
    r = await client.get("/api/chunks/bad.b2nd", params={"nchunks": "0"})
    assert r.status_code == 503 and "not readable now" in r.json()["detail"]


@pytest.mark.anyio
async def test_download_gives_the_stored_file(client, example):
    r = await client.get("/api/download/dir2/ds-4d.b2nd")
    assert r.status_code == 200 and r.content == (example / "dir2/ds-4d.b2nd").read_bytes()
    r = await client.get("/api/download/README.md")  # an ordinary file: its SChunk
    schunk = blosc2.schunk_from_cframe(r.content)
    assert schunk[:] == make_root_example.README.encode()


@pytest.mark.anyio
async def test_announcements_reach_a_real_broker(tmp_path, example):
    """The publisher and the broker applications, talking in process."""
    broker_app = broker.build_app(tmp_path / "bro")
    settings = PublisherSettings("foo", "pub1:8001", "broker:8000", tmp_path / "pub")
    publisher_app = build_app(settings, DirectoryRoot(example, settings.statedir),
                              broker_transport=httpx.ASGITransport(app=broker_app))
    async with running(broker_app, "http://broker") as to_broker:
        with broker_app.state.hub.listener() as events:
            async with running(publisher_app):
                registered = RootEvent.model_validate_json(
                    await asyncio.wait_for(events.get(), 10))
                changed = ChangeEvent.model_validate_json(
                    await asyncio.wait_for(events.get(), 10))
        roots = (await to_broker.get("/api/roots")).json()
    assert registered.root.model_dump() == {"name": "foo", "http": "pub1:8001"}
    assert roots == {"foo": {"name": "foo", "http": "pub1:8001", "reachable": True}}
    assert sorted(changed.changed) == EXAMPLE
