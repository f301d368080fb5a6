"""The package as a user meets it: the example root, the bundled test runner, the config."""
import pathlib
import subprocess
import sys

import blosc2
import numpy as np
import pytest

from caterva2 import config
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
    assert "test_parse_slice" in done.stdout


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
    assert config.load(tmp_path / "missing.toml") == {}
    (tmp_path / "bad.toml").write_text("[broker\n")
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "bad.toml")


def test_service_reads_conf_and_command_line_overrides(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[broker]\nhttp = "127.0.0.1:0"\nstatedir = "%s"\n' % (tmp_path / "b"))
    done = subprocess.run([sys.executable, "-m", "caterva2.services.broker", "--conf", str(conf),
                           "--http", "nonsense"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "expected HOST:PORT" in done.stderr and "Traceback" not in done.stderr
