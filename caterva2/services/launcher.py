"""``cat2run``: start a whole local deployment in the foreground; Ctrl-C stops it all.

With a ``caterva2.toml`` (or ``--conf FILE``), it starts the broker, every publisher
section that names a ``root`` (``[publisher]`` and each ``[publisher.ID]``) and every
subscriber section (``[subscriber]`` and each ``[subscriber.ID]``).  Without one, it starts
the broker, ``root-example`` published as ``foo``, and a subscriber, on the default ports.
"""
from __future__ import annotations

import argparse
import pathlib
import signal
import subprocess
import sys
import time

import httpx

from caterva2 import config

STARTUP_TIMEOUT_S = 30
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP")
                                                  else [])


def plan(conf: dict, conf_path: str | None) -> list[tuple[str, list[str], str]]:
    """The services to start: (label, command, address) in start order."""
    py = [sys.executable, "-m"]
    conf_args = ["--conf", conf_path] if conf_path else []
    broker = config.section(conf, "broker").get("http", config.BROKER_DEFAULT)
    services = [("broker", py + ["caterva2.services.broker"] + conf_args, broker)]
    if not conf:
        example = pathlib.Path("root-example")
        if not example.is_dir():
            from caterva2.tools import make_root_example
            example = make_root_example.make("_caterva2/root-example")
        services.append(("publisher foo", py + ["caterva2.services.publisher", "foo",
                                                str(example)], config.PUBLISHER_DEFAULT))
        services.append(("subscriber", py + ["caterva2.services.subscriber"],
                         config.SUBSCRIBER_DEFAULT))
        return services
    for kind, default in (("publisher", config.PUBLISHER_DEFAULT),
                          ("subscriber", config.SUBSCRIBER_DEFAULT)):
        ids = [None] + [k for k, v in conf.get(kind, {}).items() if isinstance(v, dict)]
        for id_ in ids:
            sect = config.section(conf, kind, id_)
            if id_ is None and not sect:
                continue
            if kind == "publisher" and not sect.get("root"):
                continue
            cmd = py + [f"caterva2.services.{kind}"] + conf_args
            if id_:
                cmd += ["--id", id_]
            label = f"{kind} {id_ or sect.get('name', '')}".strip()
            services.append((label, cmd, sect.get("http", default)))
    return services


def wait_ready(address: str, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://{address}/docs", timeout=1)
            return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="cat2run", description="Start a local Caterva2 deployment; Ctrl-C stops it.")
    parser.add_argument("--conf", help="configuration file, which must exist (default: "
                                       "./caterva2.toml, if there is one)")
    args = parser.parse_args()
    try:
        conf = config.load(args.conf)
    except config.ConfigError as e:
        print(f"cat2run: error: {e}", file=sys.stderr)
        sys.exit(2)  # (as every service says a configuration mistake)
    procs: list[subprocess.Popen] = []

    def stop_all() -> None:
        """Subscribers first and the broker last, each gone before the next is asked: no
        service sees another vanish (and logs about it) while stopping."""
        for sig in STOP_SIGNALS:  # a second Ctrl-C must not leave services behind
            signal.signal(sig, signal.SIG_IGN)
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # Ctrl-C (SIGINT), SIGTERM and a closed terminal (SIGHUP) stop everything, even when
    # started from a script that ignores SIGINT for background jobs.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.default_int_handler)
    subscribers = []
    try:
        for label, cmd, address in plan(conf, args.conf if conf else None):
            # A session of its own: Ctrl-C at the terminal reaches cat2run alone, which
            # then stops the services in order.
            proc = subprocess.Popen(cmd, start_new_session=True)
            procs.append(proc)
            if not wait_ready(address, proc):
                raise SystemExit(f"cat2run: {label} did not start on {address}; stopping")
            print(f"cat2run: {label} running on http://{address}", flush=True)
            if label.startswith("subscriber"):
                subscribers.append(address)
        for address in subscribers:
            print(f"\nPoint cat2cli at it:  cat2cli --host {address} roots"
                  f"\nOr a browser at:      http://{address}/", flush=True)
        print("\nPress Ctrl-C to stop everything.", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("cat2run: a service stopped by itself; stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ncat2run: stopping...", flush=True)
    finally:
        stop_all()
    print("cat2run: all stopped.")


if __name__ == "__main__":
    main()
