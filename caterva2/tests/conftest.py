"""Fixtures: a real broker, publisher and subscriber, started once per test session.

``services`` is the session's :class:`~caterva2.tests.harness.Deployment`; ``sub_host`` its
subscriber's address, with ``foo`` subscribed; ``example_dir`` what ``foo`` publishes;
``stack`` a private, empty deployment for one test (one that breaks or changes things).

With ``CATERVA2_USE_EXTERNAL=1`` the tests use services already running instead (the
subscriber from ``caterva2.toml`` or ``localhost:8002``, publishing ``root-example`` as
``foo``).  Managed state lives under ``./_caterva2_tests`` and is kept for inspection.
"""
from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator

import pytest

from caterva2 import config
from caterva2.tests.harness import Deployment, Stack
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
def services(state_dir, example_dir) -> Iterator[Deployment]:
    """The session's deployment, publishing ``example_dir`` as ``foo``."""
    if os.environ.get("CATERVA2_USE_EXTERNAL") == "1":
        yield Deployment(subscriber=config.client_host())
        return
    stack = Stack(state_dir / "session")
    try:
        foo = stack.publish_root("foo", example_dir)
        yield Deployment(subscriber=foo.host, stack=stack, publisher=foo.publisher.address)
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def sub_host(services) -> str:
    """The session's subscriber's address (HOST:PORT), subscribed to ``foo``."""
    import caterva2 as cat2
    cat2.subscribe("foo", services.subscriber)
    return services.subscriber


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    """A private deployment for tests that break or change things: a broker only, to which
    the test adds publishers and subscribers (see :meth:`Stack.publish_root`)."""
    s = Stack(tmp_path / "state")
    yield s
    s.stop()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CATERVA2_USE_EXTERNAL") == "1":
        skip = pytest.mark.skip(reason="needs its own services (CATERVA2_USE_EXTERNAL=1)")
        for item in items:
            if "stack" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)
