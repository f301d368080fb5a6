"""The services' APIs say what they do: a schemathesis run against each service's OpenAPI
schema finds no server error and no answer that contradicts the schema; errors are
documented as they are answered; ``/docs`` and ``/redoc`` work with no Internet access.

The run is bounded (:data:`MAX_EXAMPLES` generated requests per operation and phase, plus
the schema's examples and schemathesis' coverage cases), on loopback only, against real
services of a private deployment: a broker alone (registrations and events are fuzzed
there, where they cannot disturb anything), and a broker, a publisher of the example root
as ``foo`` and a subscriber following it (the schemas' parameter examples name its
datasets, so data routes serve real data too).

Server errors: every 5xx is a failure here, the documented 503, 504 and 507 included.
Those mean that the data cannot be had now (publisher or broker unreachable, disk full),
and nothing of that kind happens in this deployment; they are tested where they are caused
for real (``test_faults.py``, ``test_bounded_cache.py``).
"""
from __future__ import annotations

import contextlib
import html.parser
from collections.abc import Callable, Iterator
from typing import NamedTuple

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode

import caterva2 as cat2
from caterva2 import paths
from caterva2.models import PUBLISHER_KEY_HEADER
from caterva2.tests.harness import Stack, closed_port_address

MAX_EXAMPLES = 15  # per operation and generation phase: keeps each service well under 1 min
SERVICES = ("broker", "publisher", "subscriber")


class Deployment(NamedTuple):
    """Where each service under test listens, and an address where nothing does."""

    broker: str  # a broker alone
    publisher: str  # the publisher of ``foo``
    subscriber: str  # following ``foo``
    nowhere: str  # a loopback address that refuses connections


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, example_dir) -> Iterator[Deployment]:
    state = tmp_path_factory.mktemp("openapi")
    lone, data = Stack(state / "lone"), None
    try:
        data = Stack(state / "data")
        foo = data.publish_root("foo", example_dir)
        cat2.subscribe("foo", foo.host)
        with closed_port_address() as nowhere:
            yield Deployment(lone.broker.address, foo.publisher.address, foo.host, nowhere)
    finally:
        for stack in (data, lone):
            if stack is not None:
                stack.stop()


def fuzz(address: str, prepare: Callable[[schemathesis.Case], None]) -> list[str]:
    """What schemathesis finds wrong in the answers of the service at ``address``: for
    each operation of its schema, :data:`MAX_EXAMPLES` valid requests, as many invalid
    ones and its examples (each ``prepare``-d before it is sent), each answer checked
    against the schema.  Reproducible: the same requests on every run."""
    schema = schemathesis.openapi.from_url(f"http://{address}/openapi.json", timeout=30,
                                           config=schemathesis.Config.from_dict(CONFIG))
    found: dict[str, str] = {}  # one example of each distinct failure
    for result in schema.get_all_operations():
        operation = result.ok()
        strategies = operation.get_strategies_from_examples()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode == GenerationMode.POSITIVE or has_parameters(operation):
                strategies.append(operation.as_strategy(mode))
        for strategy in strategies:
            try:
                send_all(strategy, prepare, found)
            except hypothesis.errors.Unsatisfiable:  # (no invalid request of this kind)
                pass
    return [f"{failure}\n    {curl}" for failure, curl in found.items()]


# Every 5xx is a server error here (see the module's docstring).  A valid request may
# name a version no longer current (412); and whether chunk numbers or a selection fit a
# dataset depends on the dataset, which no schema can say (400).
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "412"]
CONFIG = {
    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx"]},
               "positive_data_acceptance": {"expected-statuses": ACCEPTED}},
    "operations": [{
        "include-path-regex": "^/api/(chunks|blocks|fetch)/",
        "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}}}],
}
SETTINGS = hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None,
                               deadline=None, phases=[hypothesis.Phase.generate],
                               suppress_health_check=list(hypothesis.HealthCheck))


def has_parameters(operation: schemathesis.APIOperation) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def send_all(strategy, prepare: Callable[[schemathesis.Case], None],
             found: dict[str, str]) -> None:
    """Send the cases ``strategy`` makes (at most MAX_EXAMPLES), noting each failure in
    ``found`` (not raised: that would stop the run, and Hypothesis would spend requests
    shrinking it)."""
    @SETTINGS
    @hypothesis.given(strategy)
    def send(case: schemathesis.Case) -> None:
        prepare(case)
        try:
            case.call_and_validate(headers={PUBLISHER_KEY_HEADER: "fuzzing"}, timeout=30)
        except (AssertionError, BaseExceptionGroup, requests.RequestException) as e:
            failures = e.exceptions if isinstance(e, BaseExceptionGroup) else [e]
            for failure in failures:
                text = f"{case.operation.label}: {str(failure).strip()}"
                found.setdefault(text.splitlines()[0] + "\n" + text, case.as_curl_command())

    send()


@pytest.mark.parametrize("service", SERVICES)
def test_every_answer_is_as_the_schema_says(deployment, service):
    def on_loopback(case: schemathesis.Case) -> None:
        """A registered publisher's address gets asked things: keep them on loopback."""
        if isinstance(case.body, dict) and isinstance(case.body.get("http"), str):
            with contextlib.suppress(ValueError):  # (one the broker refuses: left as it is)
                paths.check_address(case.body["http"])
                case.body["http"] = deployment.nowhere

    failures = fuzz(getattr(deployment, service), on_loopback)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


def test_errors_are_documented_as_answered(deployment):
    for service in SERVICES:
        spec = httpx.get(f"http://{getattr(deployment, service)}/openapi.json").json()
        assert "HTTPValidationError" not in spec["components"]["schemas"], service
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                where = f"{service}: {method.upper()} {path}"
                responses = operation["responses"]
                assert "422" not in responses, f"{where} documents FastAPI's 422"
                for status, response in responses.items():
                    if status[0] in "45":
                        assert response["content"] == {"application/json": {"schema": {
                            "$ref": "#/components/schemas/ErrorBody"}}}, where


def test_bad_parameters_are_a_documented_400(deployment):
    """What FastAPI refuses before a handler runs is a 400 with a JSON detail, as the
    schema says (not FastAPI's 422)."""
    for url in (f"http://{deployment.publisher}/api/blocks/ds-1d.b2nd?nchunk=x&blocks=0",
                f"http://{deployment.subscriber}/api/fetch/foo/ds-1d.b2nd?chunks=maybe"):
        r = httpx.get(url)
        assert r.status_code == 400 and "invalid" in r.json()["detail"], r.text
    r = httpx.post(f"http://{deployment.broker}/api/roots", json={"name": "x"})
    assert r.status_code == 400 and "http" in r.json()["detail"], r.text


class _Assets(html.parser.HTMLParser):
    """The URLs a page loads: scripts, style sheets, icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") if tag == "script" else found.get("href") if tag == "link" \
            else None
        if url:
            self.urls.append(url)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
@pytest.mark.parametrize("service", SERVICES)
def test_api_pages_work_offline(deployment, service, page):
    """Every script, style sheet and icon of the page is ours, and is there."""
    address = getattr(deployment, service)
    with httpx.Client(base_url=f"http://{address}", timeout=30) as client:
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], r.text
        assets = _Assets()
        assets.feed(r.text)
        assert len(assets.urls) >= 2, f"{page} loads no scripts? {r.text[:500]}"
        for url in assets.urls:
            assert url.startswith("/") and not url.startswith("//"), \
                f"{service}{page} loads {url} from elsewhere"
            asset = client.get(url)
            assert asset.status_code == 200 and asset.content, f"{url}: {asset.status_code}"
        assert "/openapi.json" in r.text and client.get("/openapi.json").status_code == 200


def test_downloads_are_sent_as_binary(deployment):
    """A dataset's file is octet-stream at the publisher as at the subscriber (Starlette
    guessed text/plain for .b2nd files)."""
    for url in (f"http://{deployment.publisher}/api/download/dir1/ds-2d.b2nd",
                f"http://{deployment.subscriber}/files/foo/dir1/ds-2d.b2nd"):
        r = httpx.get(url)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream", url
