"""The services' APIs say what they do: a schemathesis run against each service's OpenAPI
schema finds no server error and no answer that contradicts the schema; errors are
documented as they are answered; ``/docs`` and ``/redoc`` work with no Internet access.

The run is bounded (per operation, :data:`MAX_EXAMPLES` valid requests, as many invalid
ones, and those made of the schema's examples; the same on every run), on loopback only,
against real services of a private deployment: a broker alone (registrations and events
are fuzzed there, where they cannot disturb anything), and a broker, a publisher of the
example root as ``foo``, a subscriber following it (the schemas' parameter examples name
its datasets, so data routes serve real data too) and a subscriber requiring logins.
Requests are made with schemathesis' Python API (``APIOperation.as_strategy``,
``Case.call_and_validate``): its pytest loader for schemas known only at run time
(``schemathesis.pytest.from_fixture``) fails on pytest 9.2, which has no ``Node._nodeid``.

Server errors: every 5xx is a failure here, the documented 503, 504 and 507 included.
Those mean that the data cannot be had now (publisher or broker unreachable, disk full),
and nothing of that kind happens in this deployment; they are tested where they are caused
for real (``test_faults.py``, ``test_bounded_cache.py``).
"""
from __future__ import annotations

import contextlib
import html.parser
import os
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

import caterva2 as cat2
from caterva2 import paths
from caterva2.models import PUBLISHER_KEY_HEADER
from caterva2.tests.harness import Stack, closed_port_address

MAX_EXAMPLES = 30  # per operation and kind of request: each service takes ~10 s
SERVICES = ("broker", "publisher", "subscriber")


class Deployment(NamedTuple):
    """Where each service under test listens, and an address where nothing does."""

    broker: str  # a broker alone
    publisher: str  # the publisher of ``foo``
    subscriber: str  # following ``foo``
    locked: str  # a subscriber started with --require-login (no user has a key)
    nowhere: str  # a loopback address that refuses connections


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, example_dir) -> Iterator[Deployment]:
    if os.environ.get("CATERVA2_USE_EXTERNAL") == "1":
        pytest.skip("needs its own services (CATERVA2_USE_EXTERNAL=1)")
    state = tmp_path_factory.mktemp("openapi")
    lone, data = Stack(state / "lone"), None
    try:
        data = Stack(state / "data")
        foo = data.publish_root("foo", example_dir)
        cat2.subscribe("foo", foo.host)
        locked = data.subscriber("locked", args=["--require-login"])
        with closed_port_address() as nowhere:
            yield Deployment(lone.broker.address, foo.publisher.address, foo.host,
                             locked.address, nowhere)
    finally:
        for stack in (data, lone):
            if stack is not None:
                stack.stop()


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


def test_credentials_are_documented_where_they_are_asked_for(deployment):
    spec = httpx.get(f"http://{deployment.subscriber}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["userKey"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            expected = [] if path == "/health" else [{}, {"userKey": []}]
            assert operation.get("security", []) == expected, path
    r = httpx.get(f"http://{deployment.locked}/api/roots")
    assert r.status_code == 401 and "API key" in r.json()["detail"], r.text
    assert httpx.get(f"http://{deployment.locked}/health").status_code == 200
    spec = httpx.get(f"http://{deployment.broker}/openapi.json").json()
    assert spec["paths"]["/api/roots"]["post"]["security"][-1] == {"publisherKey": []}
    assert "security" not in spec["paths"]["/api/roots"]["get"]


def test_bad_parameters_are_a_documented_400(deployment):
    """What FastAPI refuses before a handler runs is a 400 with a JSON detail, as the
    schema says (not FastAPI's 422)."""
    for url in (f"http://{deployment.publisher}/api/blocks/ds-1d.b2nd?nchunk=x&blocks=0",
                f"http://{deployment.subscriber}/api/fetch/foo/ds-1d.b2nd?chunks=maybe"):
        r = httpx.get(url)
        assert r.status_code == 400 and "invalid" in r.json()["detail"], r.text
    r = httpx.post(f"http://{deployment.broker}/api/roots", json={"name": "x"},
                   headers={PUBLISHER_KEY_HEADER: "a key"})
    assert r.status_code == 400 and "http" in r.json()["detail"], r.text


@pytest.mark.parametrize("schema, check, alphabet", [
    (paths.ROOT_NAME_SCHEMA, paths.check_root_name, "aZ09_.+-/\\ \x00é\n"),
    (paths.DATASET_PATH_SCHEMA, paths.check_relpath, "a./\\\x00 é\n"),
    (paths.ADDRESS_SCHEMA, paths.check_address, "ahtpsHTPS:/019[]_.-? @\t"),
])
def test_name_schemas_say_what_the_checks_take(schema, check, alphabet):
    """The patterns in the schemas and the checks of :mod:`caterva2.paths` agree, so that
    what the schemas call valid is taken, and what they call invalid refused."""
    pattern = re.compile(schema["pattern"])

    @hypothesis.settings(max_examples=500, derandomize=True, database=None, deadline=None)
    @hypothesis.given(hypothesis.strategies.text(alphabet, max_size=12)
                      | hypothesis.strategies.from_regex(pattern))
    def agree(text: str) -> None:
        try:
            check(text)
            taken = True
        except ValueError:
            taken = False
        described = bool(pattern.search(text)) and len(text) <= schema["maxLength"]
        assert taken == described, f"{text!r}: check {taken}, schema {described}"

    agree()


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
        assert "http://" not in r.text and "https://" not in r.text, r.text


@pytest.mark.parametrize("asked, status, words", [
    ("bytes=abc", 400, "bad Range header 'bytes=abc'"),
    ("items=0-1", 400, "Only support bytes range"),
    ("bytes=5-2", 400, "start must be less than end"),
    ("bytes=99999999-", 416, "beyond the end of the file"),
])
def test_ranges_that_cannot_be_served_are_json_errors(deployment, asked, status, words):
    """Starlette answered these in plain text (a 416 with no body at all)."""
    for url in (f"http://{deployment.publisher}/api/download/dir1/ds-2d.b2nd",
                f"http://{deployment.subscriber}/files/foo/dir1/ds-2d.b2nd"):
        r = httpx.get(url, headers={"Range": asked})
        assert r.status_code == status and words in r.json()["detail"], (url, r.text)
        if status == 416:
            assert r.headers["content-range"].startswith("bytes */"), r.headers


def test_parts_of_files_are_served(deployment, example_dir):
    whole = (example_dir / "dir1" / "ds-2d.b2nd").read_bytes()
    for url in (f"http://{deployment.publisher}/api/download/dir1/ds-2d.b2nd",
                f"http://{deployment.subscriber}/files/foo/dir1/ds-2d.b2nd"):
        r = httpx.get(url, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == whole[10:20], (url, r.status_code)


def test_downloads_are_sent_as_binary(deployment):
    """A dataset's file is octet-stream at the publisher as at the subscriber, as the
    schemas say."""
    for url in (f"http://{deployment.publisher}/api/download/dir1/ds-2d.b2nd",
                f"http://{deployment.subscriber}/files/foo/dir1/ds-2d.b2nd"):
        r = httpx.get(url)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream", url


def fuzz(address: str, prepare: Callable[[schemathesis.Case], None],
         schema_at: str | None = None) -> list[str]:
    """What schemathesis finds wrong in the answers of the service at ``address``: for
    each operation of its schema (read at ``schema_at``, default ``address``),
    :data:`MAX_EXAMPLES` valid requests, as many invalid ones and its examples (each
    ``prepare``-d before it is sent), each answer checked against the schema.
    Reproducible: the same requests on every run."""
    schema = schemathesis.openapi.from_url(f"http://{schema_at or address}/openapi.json",
                                           timeout=30,
                                           config=schemathesis.Config.from_dict(CONFIG))
    found: dict[str, str] = {}  # one example of each distinct failure
    results = list(schema.get_all_operations())
    invalid = [result.err() for result in results if not isinstance(result, Ok)]
    assert not invalid, f"the schema at {schema_at or address} is not valid: {invalid}"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    # (unsubscribing from the example root last: every other route reads it first)
    for operation in sorted(operations, key=lambda op: "unsubscribe" in op.path):
        strategies = operation.get_strategies_from_examples()
        for mode in map(GenerationMode, ("positive", "negative")):
            if mode == "positive" or has_parameters(operation):
                strategies.append(operation.as_strategy(mode))
        for strategy in strategies:
            try:
                send_all(strategy, prepare, f"http://{address}", found)
            except hypothesis.errors.Unsatisfiable:  # (no invalid request of this kind)
                pass
    return [f"{failure}\n    {curl}" for failure, curl in found.items()]


# Every 5xx is a server error here (see the module's docstring).  A valid request may
# name a version no longer current (412); and whether chunk numbers, a selection or a byte
# range fit a dataset depends on the dataset, which no schema can say (400, 416).
# Credentials made up by schemathesis are not all invalid here: a publisher's key is its
# own (any key is one), and these services run open (no broker token, no logins); logins
# and tokens are tested in test_access_*.py.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "412"]
CONFIG = {
    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx"]},
               "positive_data_acceptance": {"expected-statuses": ACCEPTED},
               "ignored_auth": {"enabled": False}},
    "operations": [{
        "include-path-regex": (r"^/api/(relay/\{root\}/)?(chunks|blocks|fetch)/|^/files/"
                               r"|^/api/download/\{path\}$"),
        "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400",
                                                                      "416"]}}}],
}
SETTINGS = hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None,
                               deadline=None, phases=[hypothesis.Phase.generate],
                               suppress_health_check=list(hypothesis.HealthCheck))


def has_parameters(operation: schemathesis.APIOperation) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def send_all(strategy, prepare: Callable[[schemathesis.Case], None], base_url: str,
             found: dict[str, str]) -> None:
    """Send the cases ``strategy`` makes (at most MAX_EXAMPLES) to ``base_url``, noting
    each failure in ``found`` (not raised: that would stop the run, and Hypothesis would
    spend requests shrinking it)."""
    @SETTINGS
    @hypothesis.given(strategy)
    def send(case: schemathesis.Case) -> None:
        prepare(case)
        try:
            case.call_and_validate(base_url=base_url, timeout=30,
                                   headers={PUBLISHER_KEY_HEADER: "fuzzing"})
        except (AssertionError, FailureGroup, requests.RequestException) as e:
            failures = e.exceptions if isinstance(e, FailureGroup) else [e]
            for failure in failures:
                text = f"{case.operation.label}: {str(failure).strip()}"
                found.setdefault(text.splitlines()[0] + "\n" + text,
                                 case.as_curl_command(base_url=base_url))

    send()


@pytest.mark.parametrize("service", [*SERVICES, "locked"])
def test_every_answer_is_as_the_schema_says(deployment, service):
    """Each service, and a subscriber requiring logins asked with no key (its every answer
    but /health's a 401, which its schema must say; its schema is the open one's: it
    asks for a key too)."""
    def on_loopback(case: schemathesis.Case) -> None:
        """A registered publisher's address gets asked things: keep them on loopback."""
        address = case.body.get("http") if isinstance(case.body, dict) else None
        if isinstance(case.body, dict) and isinstance(address, str):
            with contextlib.suppress(ValueError):  # (one the broker refuses: left as it is)
                paths.check_address(address)
                case.body["http"] = deployment.nowhere

    schema_at = deployment.subscriber if service == "locked" else None
    try:
        failures = fuzz(getattr(deployment, service), on_loopback, schema_at)
    finally:
        cat2.subscribe("foo", deployment.subscriber)  # (it unsubscribed, among other things)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
