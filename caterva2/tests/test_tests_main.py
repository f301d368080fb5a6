"""``python -m caterva2.tests``: runs what it is given, and says what to install without
pytest."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

PACKAGE_PARENT = pathlib.Path(__file__).resolve().parents[2]


def run(*code_or_args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}
    return subprocess.run([sys.executable, *code_or_args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_named_test_file_runs_alone(tmp_path):
    (tmp_path / "test_mine.py").write_text("def test_one():\n    pass\n")
    done = run("-m", "caterva2.tests", "test_mine.py", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout  # (not the whole suite)


def test_a_package_test_is_found_by_its_name_from_anywhere(tmp_path):
    done = run("-m", "caterva2.tests", "test_slicing.py::test_cli_splits_a_dataset_from_its_selection", "-q",
               cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "deselected" not in done.stdout


def test_without_pytest_one_line_says_what_to_install(tmp_path):
    code = ("import sys, runpy; sys.modules['pytest'] = None; sys.argv = ['x']; "
            "runpy.run_module('caterva2.tests', run_name='__main__')")
    done = run("-c", code, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == ("caterva2.tests: pytest is not installed; install the test "
                           "dependencies with: pip install 'caterva2[tests]'\n")
