"""Fixtures: a real broker, publisher and subscriber, started once per test session.

With ``CATERVA2_USE_EXTERNAL=1`` the tests use services already running instead (the
subscriber from ``caterva2.toml`` or ``localhost:8002``, publishing ``root-example`` as
``foo``).  Managed state lives under ``./_caterva2_tests`` and is kept for inspection.
"""
from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from caterva2 import config
from caterva2.tests.harness import Stack, wait_until
from caterva2.tools import make_root_example

STATE = pathlib.Path("_caterva2_tests")


@pytest.fixture(scope="session")
def state_dir() -> pathlib.Path:
    if STATE.exists():
        shutil.rmtree(STATE)
    STATE.mkdir()
    return STATE.resolve()


@pytest.fixture(scope="session")
def example_dir(state_dir) -> pathlib.Path:
    """A fresh copy of the example root (what the publisher serves as ``foo``)."""
    return make_root_example.make(state_dir / "root-example")


@pytest.fixture(scope="session")
def services(state_dir, example_dir):
    """The session's deployment: ``{"sub": host, "stack": Stack or None}``."""
    if os.environ.get("CATERVA2_USE_EXTERNAL") == "1":
        yield {"sub": config.client_host(), "stack": None}
        return
    stack = Stack(state_dir / "session")
    try:
        stack.publisher("foo", example_dir)
        sub = stack.subscriber()
        import caterva2 as cat2
        wait_until(lambda: "foo" in cat2.get_roots(sub.address), what="root foo at subscriber")
        yield {"sub": sub.address, "stack": stack}
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def sub_host(services) -> str:
    import caterva2 as cat2
    cat2.subscribe("foo", services["sub"])
    return services["sub"]


@pytest.fixture
def stack(tmp_path):
    """A private deployment for tests that break or change things."""
    s = Stack(tmp_path / "state")
    yield s
    s.stop()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CATERVA2_USE_EXTERNAL") == "1":
        skip = pytest.mark.skip(reason="needs its own services (CATERVA2_USE_EXTERNAL=1)")
        for item in items:
            if "stack" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)
