"""Start real Caterva2 services as processes on free loopback ports, for tests.

Each service binds port 0 and writes the address it got to ``STATEDIR/address``; this
module waits for that file and for the service to answer HTTP.  :class:`CountingProxy`
stands between two services to count what crosses the link between them.

What tests are handed is named: a :class:`Deployment` (the session's services), a
:class:`PublishedRoot` (one root, its publisher and a subscriber), :class:`LinkCounts`.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import httpx

from caterva2 import tls
from caterva2.models import PUBLISHER_KEY_HEADER

STARTUP_TIMEOUT_S = 60
LOOPBACK = "127.0.0.1"


class Service:
    """One running service process."""

    def __init__(self, kind: str, args: list[str], statedir: pathlib.Path,
                 http: str = "127.0.0.1:0", broker: str | None = None, cwd=None,
                 env: dict[str, str] | None = None):
        self.kind, self.args, self.statedir = kind, list(args), pathlib.Path(statedir)
        self.http, self.broker, self.cwd = http, broker, cwd
        self.env = dict(env or {})  # (added to this process's environment)
        self.address = ""  # host:port, once started
        self.proc: subprocess.Popen | None = None
        self.start()

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", f"caterva2.services.{self.kind}",
               "--http", self.http, "--statedir", str(self.statedir), "--loglevel", "info"]
        if self.broker:
            cmd += ["--broker", self.broker]
        return cmd + [str(a) for a in self.args]

    def start(self) -> None:
        address_file = self.statedir / "address"
        address_file.unlink(missing_ok=True)
        self.statedir.mkdir(parents=True, exist_ok=True)
        with open(self.statedir / "service.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=self.cwd,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1",
                                              **self.env})
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.log_tail()}")
            if address_file.exists():
                self.address = address_file.read_text().strip()
                if _answers(self.address):
                    # Later restarts reuse the same port, as a real deployment would.
                    self.http = self.address.removeprefix("https://")
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not start in {STARTUP_TIMEOUT_S}s:\n"
                           f"{self.log_tail()}")

    def stop(self, kill: bool = False) -> None:
        stop_process(self.proc, kill)

    def restart(self) -> None:
        self.stop()
        self.start()

    def peak_memory_mb(self) -> float:
        """The process's peak resident memory so far (Linux's VmHWM), in MiB; NaN if the
        system does not say."""
        assert self.proc is not None, "the service was never started"
        with contextlib.suppress(OSError):
            for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    @property
    def key(self) -> str:
        """A publisher's own key (made at its first start), as it sends it to its broker."""
        return (self.statedir / "publisher.key").read_text().strip()

    def log_tail(self, lines: int = 30) -> str:
        return file_tail(self.statedir / "service.log", lines)


def stop_process(proc: subprocess.Popen | None, kill: bool = False) -> None:
    """Stop ``proc`` if it runs (SIGTERM, or SIGKILL with ``kill``), killing it if it
    has not ended 15 s later."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def file_tail(path: pathlib.Path, lines: int) -> str:
    """The last ``lines`` lines of a log file ("(no log)" if it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def cat2admin(*args) -> subprocess.CompletedProcess:
    """Run ``cat2admin ARGS`` as an operator would, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "caterva2.tools.admin", *map(str, args)],
                          capture_output=True, text=True, timeout=60, check=False)


def _answers(address: str) -> bool:
    """Whether the service at ``address`` answers HTTP (over TLS: a certificate this process
    does not trust counts, as the service did answer)."""
    try:
        httpx.get(tls.base_url(address) + "/docs", timeout=1, verify=tls.client_context())
    except httpx.ConnectError as e:
        return "CERTIFICATE_VERIFY_FAILED" in str(e)
    except httpx.HTTPError:
        return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports free right now, for programs that cannot bind port 0 themselves
    (``cat2run`` starts services on the fixed ports of its configuration).  They are held
    together until all are picked, so the ``n`` differ, then released."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@contextlib.contextmanager
def closed_port_address() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a loopback port where nothing listens, for as long as the
    ``with`` block lasts: a client connecting there is refused at once.

    The port is bound (so no other program can take it meanwhile) but never listened on,
    so connections to it are refused.  Unlike a fixed port (9, 9999...), it cannot
    happen to have a server on it.
    """
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        yield f"{LOOPBACK}:{s.getsockname()[1]}"


def wait_until(predicate, timeout: float = 20, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a true value; bounded in time."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def register_root(broker: str, name: str, http: str, key: str | None = None,
                  token: str | None = None) -> httpx.Response:
    """Register root ``name`` at ``http`` with the broker at ``broker``, as a publisher with
    ``key`` (a new random one if None) would; the broker's answer, whatever it is."""
    headers = {PUBLISHER_KEY_HEADER: key or secrets.token_urlsafe(32)}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"http://{broker}/api/roots", json={"name": name, "http": http},
                      headers=headers, timeout=10)


class Stack:
    """A broker, publishers and subscribers under one state directory.

    ``broker_args`` and ``broker_env`` are given to the broker (options, and variables
    added to its environment, such as ``CATERVA2_BROKER_TOKEN``).
    """

    def __init__(self, statedir: pathlib.Path, broker_args: Sequence[str] = (),
                 broker_env: dict[str, str] | None = None):
        self.statedir = pathlib.Path(statedir)
        self.services: list[Service] = []
        self.broker = self._add(Service("broker", list(broker_args), self.statedir / "bro",
                                        env=broker_env))

    def _add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def publisher(self, name: str, source, id_: str | None = None, args: Sequence[str] = (),
                  http: str = "127.0.0.1:0", env: dict[str, str] | None = None) -> Service:
        """A publisher of ``source`` as root ``name`` (``args``: more options, such as
        ``["--url", ADDRESS]``; ``http``: where it listens; ``env``: variables added to its
        environment).  Its state directory, and so its key, is ``STATEDIR/pub.ID`` (ID
        defaults to ``name``)."""
        return self._add(Service("publisher", [name, source, *args],
                                 self.statedir / f"pub.{id_ or name}", http=http,
                                 broker=self.broker.address, env=env))

    def subscriber(self, id_: str = "sub", args: Sequence[str] = (),
                   env: dict[str, str] | None = None) -> Service:
        """A subscriber with state in ``STATEDIR/ID``, started with extra ``args`` (and
        ``env`` added to its environment)."""
        return self._add(Service("subscriber", list(args), self.statedir / id_,
                                 broker=self.broker.address, env=env))

    def publish_root(self, name: str, source, subscriber_id: str = "sub") -> PublishedRoot:
        """Start a publisher of ``source`` as root ``name`` and a subscriber, and wait until
        the subscriber knows the root (it is not subscribed to it yet)."""
        import caterva2 as cat2

        publisher = self.publisher(name, source)
        subscriber = self.subscriber(subscriber_id)
        wait_until(lambda: name in cat2.get_roots(subscriber.address),
                   what=f"root {name} at the subscriber")
        return PublishedRoot(name, pathlib.Path(source), publisher, subscriber)

    def counted_publisher(self, name: str, source, id_: str | None = None,
                          env: dict[str, str] | None = None) -> tuple[Service, CountingProxy]:
        """A publisher of ``source`` as root ``name`` that announces a
        :class:`CountingProxy` in front of it (``cat2pub --url``): whatever subscribers
        fetch from it crosses the proxy and is counted.  The caller closes the proxy."""
        port = free_ports(1)[0]
        proxy = CountingProxy(f"127.0.0.1:{port}")
        try:
            publisher = self.publisher(name, source, id_, args=["--url", proxy.address],
                                       http=f"127.0.0.1:{port}", env=env)
        except BaseException:
            proxy.close()
            raise
        return publisher, proxy

    def count_link(self, publisher: Service, name: str) -> CountingProxy:
        """Register ``publisher`` again at the broker, as root ``name`` reached through a
        new :class:`CountingProxy`: whatever a subscriber fetches for root ``name`` crosses
        the proxy and is counted.  The caller closes the proxy."""
        proxy = CountingProxy(publisher.address)
        try:
            register_root(self.broker.address, name, proxy.address).raise_for_status()
        except BaseException:
            proxy.close()
            raise
        return proxy

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


@dataclasses.dataclass(frozen=True)
class Deployment:
    """The services a test session talks to.

    ``stack`` and ``publisher`` are None when the tests use services already running
    (``CATERVA2_USE_EXTERNAL=1``): then only the subscriber's address is known.
    """

    subscriber: str  # address (HOST:PORT) of the subscriber, where ``foo`` is published
    stack: Stack | None = None
    publisher: str | None = None  # address of the publisher of ``foo``, if managed here


@dataclasses.dataclass(frozen=True)
class PublishedRoot:
    """A root ``name`` published from ``source`` by ``publisher``, known to ``subscriber``."""

    name: str
    source: pathlib.Path
    publisher: Service
    subscriber: Service

    @property
    def host(self) -> str:
        """The subscriber's address, as clients are given it."""
        return self.subscriber.address


class LinkCounts(NamedTuple):
    """What crossed a :class:`CountingProxy` so far."""

    down: int  # bytes from the target to its clients (answers)
    up: int  # bytes from the clients to the target (requests)
    requests: int  # HTTP GET requests


class CountingProxy:
    """A loopback TCP proxy counting the bytes going each way; its own loop, in a thread."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.down = self.up = self.requests = 0  # target->client, client->target, GETs
        self.writers: set[asyncio.StreamWriter] = set()  # both ends of every connection
        self.address = ""
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("proxy did not start")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, LOOPBACK, 0))
        self.address = f"{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
        ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), 5)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src, dst, upstream: bool) -> None:
            try:
                while data := await src.read(1 << 16):
                    if upstream:
                        self.up += len(data)
                        self.requests += data.count(b"GET /")
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                self.writers.discard(dst)
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def counters(self) -> LinkCounts:
        return LinkCounts(self.down, self.up, self.requests)

    def close(self) -> None:
        """Cut every connection, then stop."""
        async def shutdown() -> None:
            for writer in list(self.writers):
                writer.close()  # (the pipes reading from it end, and close the other side)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self.thread.join(10)
