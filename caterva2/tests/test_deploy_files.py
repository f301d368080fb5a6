"""The example deployment of ``docs/deploy.md`` stays valid: ``docs/deploy/check.py``
(also ``make check-deploy``) checks its systemd units, configuration and NATS server
configuration with the real tools (only in a checkout: an installed package has no docs)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

CHECK = pathlib.Path(__file__).resolve().parents[2] / "docs" / "deploy" / "check.py"


@pytest.mark.skipif(not CHECK.exists(), reason="docs/deploy is in a checkout only")
def test_the_example_deployment_files_pass_their_checks():
    done = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
