"""The package as a user meets it: the example root, the bundled test runner, the config."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading

import blosc2
import numpy as np
import pytest

from caterva2 import config
from caterva2.tests.harness import free_ports, wait_until
from caterva2.tools import make_root_example

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


def test_committed_root_example_matches_its_generator(tmp_path):
    committed = CHECKOUT / "root-example"
    if not committed.is_dir():
        pytest.skip("not running from a checkout")
    fresh = make_root_example.make(tmp_path / "ex")
    names = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(committed).as_posix()
                           for p in committed.rglob("*") if p.is_file())
    for name in names:
        if name.endswith((".b2nd", ".b2frame")):
            a, b = blosc2.open(str(fresh / name)), blosc2.open(str(committed / name))
            np.testing.assert_array_equal(np.asarray(a[()] if name.endswith(".b2nd") else a[:]),
                                          np.asarray(b[()] if name.endswith(".b2nd") else b[:]))
        else:
            assert (fresh / name).read_bytes() == (committed / name).read_bytes()


def test_python_m_caterva2_tests_runs_the_suite():
    done = subprocess.run([sys.executable, "-m", "caterva2.tests", "-q", "-k",
                           "test_parse_slice and not malformed", "--co"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_parse_slice" in done.stdout, done.stdout


def test_configuration_file_sections_and_ids(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[broker]\nhttp = "localhost:9000"\n'
                    '[publisher]\nloglevel = "info"\n[publisher.p1]\nhttp = "localhost:9001"\n'
                    'name = "foo"\nroot = "root-example"\n'
                    '[subscriber]\nurl = "http://example.org:8080/"\n')
    loaded = config.load(conf)
    assert config.section(loaded, "publisher", "p1") == {
        "loglevel": "info", "http": "localhost:9001", "name": "foo", "root": "root-example"}
    assert config.client_host(conf) == "http://example.org:8080"
    with pytest.raises(config.ConfigError, match="missing.toml does not exist"):
        config.load(tmp_path / "missing.toml")  # (named: a typo must not go unnoticed)
    (tmp_path / "bad.toml").write_text("[broker\n")
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "bad.toml")


def test_service_reads_conf_and_command_line_overrides(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[broker]\nhttp = "127.0.0.1:0"\nstatedir = "%s"\n' % (tmp_path / "b"))
    done = subprocess.run([sys.executable, "-m", "caterva2.services.broker", "--conf", str(conf),
                           "--http", "nonsense"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "expected HOST:PORT" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_cat2run_starts_a_deployment_and_ctrl_c_stops_it_cleanly(tmp_path, example_dir):
    import caterva2 as cat2

    bro, pub, sub = free_ports(3)
    conf = tmp_path / "caterva2.toml"
    sections = {"broker": {"http": f"127.0.0.1:{bro}"},
                "publisher": {"http": f"127.0.0.1:{pub}", "name": "foo", "root": example_dir},
                "subscriber": {"http": f"127.0.0.1:{sub}"}}
    conf.write_text("".join(
        f"[{kind}]\nstatedir = \"{tmp_path / kind}\"\n"
        + "".join(f'{key} = "{value}"\n' for key, value in keys.items())
        for kind, keys in sections.items()))
    run = subprocess.Popen([sys.executable, "-m", "caterva2.services.launcher", "--conf", str(conf)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)  # a process group, as at a terminal
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: "Press Ctrl-C to stop everything.\n" in lines, timeout=60,
                   what="cat2run to say the deployment is up")
        wait_until(lambda: "foo" in cat2.get_roots(f"127.0.0.1:{sub}"), timeout=60,
                   what="its subscriber knowing root foo")
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        run.wait(60)
        reader.join(10)
    finally:
        if run.poll() is None:  # failed midway: cat2run still stops its services in order
            run.terminate()
            try:
                run.wait(30)
            except subprocess.TimeoutExpired:
                run.kill()
        run.stdout.close()
    out = "".join(lines)
    assert run.returncode == 0, out
    assert out.endswith("cat2run: stopping...\ncat2run: all stopped.\n"), out
    # Stopped in order (subscriber first, broker last): nobody saw another one vanish.
    for noise in ("WARNING", "ERROR", "Traceback"):
        assert noise not in out, out
    for port in (bro, pub, sub):
        with socket.socket() as s, pytest.raises(OSError):
            s.connect(("127.0.0.1", port))
