"""Configuration mistakes are errors: a ``--conf`` file that does not exist, an ``--id``
without its section.  Each program says so in one line and exits with status 2, before
doing anything else; only the default ``caterva2.toml``, which nobody named, may be missing.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE_PARENT = pathlib.Path(__file__).resolve().parents[2]
PROGRAMS = {"cat2bro": "caterva2.services.broker", "cat2pub": "caterva2.services.publisher",
            "cat2sub": "caterva2.services.subscriber", "cat2cli": "caterva2.cli",
            "cat2run": "caterva2.services.launcher"}


def run(program: str, *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """``program ARGS`` as a user runs it, in ``cwd`` (which has no caterva2.toml)."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}
    env.pop("CATERVA2_SUBSCRIBER", None)
    return subprocess.run([sys.executable, "-m", PROGRAMS[program], *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def one_line_error(done: subprocess.CompletedProcess, program: str, message: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == f"{program}: error: {message}\n", done.stderr
    assert done.stdout == ""


# (--http port 0: a service that wrongly went on would not clash with anything)
@pytest.mark.parametrize("program, args", [
    ("cat2bro", ["--http", "127.0.0.1:0"]),
    ("cat2pub", ["--http", "127.0.0.1:0", "foo", "."]),
    ("cat2sub", ["--http", "127.0.0.1:0"]),
    ("cat2cli", ["roots"]),
    ("cat2run", []),
])
def test_a_conf_file_that_does_not_exist_is_an_error(tmp_path, program, args):
    done = run(program, "--conf", "caterva.toml", *args, cwd=tmp_path)  # (a typo)
    one_line_error(done, program, "configuration file caterva.toml does not exist")


@pytest.mark.parametrize("program, kind, args", [
    ("cat2pub", "publisher", ["--http", "127.0.0.1:0", "foo", "."]),
    ("cat2sub", "subscriber", ["--http", "127.0.0.1:0"]),
])
def test_an_id_without_its_section_is_an_error(tmp_path, program, kind, args):
    (tmp_path / "caterva2.toml").write_text(f'[{kind}.one]\nloglevel = "info"\n')
    done = run(program, "--id", "two", *args, cwd=tmp_path)
    one_line_error(done, program, f"--id two: no section [{kind}.two] in caterva2.toml")

    (tmp_path / "mine.toml").write_text("")
    done = run(program, "--conf", "mine.toml", "--id", "one", *args, cwd=tmp_path)
    one_line_error(done, program, f"--id one: no section [{kind}.one] in mine.toml")


def test_cat2cli_names_the_missing_conf_even_with_host(tmp_path):
    done = run("cat2cli", "--host", "localhost:1", "--conf", "nope.toml", "roots", cwd=tmp_path)
    one_line_error(done, "cat2cli", "configuration file nope.toml does not exist")


def test_the_default_conf_may_be_missing(tmp_path):
    """With no caterva2.toml and no --conf, cat2cli goes on to its default subscriber."""
    done = run("cat2cli", "--host", "127.0.0.1:1", "roots", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot reach the subscriber at 127.0.0.1:1" in done.stderr, done.stderr
