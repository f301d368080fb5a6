"""What the services' OpenAPI schemas (``/openapi.json``, shown at ``/docs``) say they answer.

FastAPI documents, by itself, a route's 200 answer as JSON and a 422 for bad parameters.
Our services answer otherwise (:mod:`caterva2.services.errors`): every error is JSON
``{"detail": "..."}`` (:class:`ErrorBody`), bad parameters are a 400, and data answers are
binary.  So each route says what it gives, next to its code::

    @router.get("/api/digests/{path:path}", response_class=Response,
                responses=binary(OCTET_STREAM, description="...") | errors(404, 412, 503))

and :func:`document` makes the whole schema true to the error handlers: the 422 that FastAPI
adds becomes our 400 (or goes, where no parameter can fail to validate), and every error's
body is the JSON error body, even one declared bare (``responses={401: {}}``).  It also
serves ``/docs`` offline (:mod:`.docs_ui`).

Access control adds errors to many routes at once: :data:`LOGIN` (a subscriber started
with ``--require-login`` answers 401 on every route but ``/health``, and 503 if it cannot
read its users) and :data:`ROOT_ACCESS` (403 where a subscriber's per-root rules apply).
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from caterva2 import __version__, paths, wire
from caterva2.models import PUBLISHER_KEY_HEADER

Responses = dict[int | str, dict[str, Any]]


class ErrorBody(BaseModel):
    """An error answer: why the request failed, in words a user can act on."""

    detail: str


# Why each error status is given, as the schema tells it.
WHY = {
    400: "Bad request: a malformed or out-of-range parameter, path or body",
    401: "No valid credentials were sent (a broker token, a user's API key)",
    403: "The credentials sent do not allow this",
    404: "No such root, dataset or file here",
    409: "In conflict with the current state (a root name held by another publisher; a "
         "dataset that changed its shape or chunks while being read: read it again)",
    412: "The version asked for is no longer the current one",
    413: "The request body is larger than this service takes",
    416: "The Range asked for starts beyond the file's end",
    502: "A re-published root's source upstream (another site's subscriber) is "
         "unreachable, or answered with an error",
    503: "Cannot be answered now: the data's publisher or the broker is unreachable, the "
         "dataset is being rewritten or cannot be read (or, at a subscriber requiring "
         "logins, its users cannot be read); try again later",
    504: "The publisher of the data did not answer in time",
    507: "The service cannot write to its disk (full, or its cache bound is reached by "
         "answers in flight)",
}

OCTET_STREAM = "application/octet-stream"
CHUNK_STREAM = wire.CHUNKS_MEDIA_TYPE
PROMETHEUS = "text/plain"  # (version=... and charset parameters follow)
OPENMETRICS = "application/openmetrics-text"


def errors(*statuses: int) -> Responses:
    """The ``responses=`` of a route that may fail with ``statuses``, each with its JSON
    :class:`ErrorBody` and why it is given."""
    return {status: {"model": ErrorBody, "description": WHY[status]} for status in statuses}


def binary(*media_types: str, description: str,
           headers: dict[str, str] | None = None) -> Responses:
    """The ``responses=`` of a route whose answer is bytes of one of ``media_types`` (give
    the route ``response_class=Response`` too, or FastAPI adds JSON to them); ``headers``:
    what headers it may carry (see :func:`described`)."""
    answer: dict[str, Any] = {
        "description": description,
        "content": {media_type: {"schema": {"type": "string", "format": "binary"}}
                    for media_type in media_types}}
    if headers:
        answer["headers"] = described(headers)
    return {200: answer}


def file_answers(description: str) -> Responses:
    """The ``responses=`` of a route answering a whole file (see :data:`RANGE_REQUESTS`)."""
    binary_schema = {"schema": {"type": "string", "format": "binary"}}
    return binary(OCTET_STREAM, description=description) | {206: {
        "description": "The parts of the file that the Range header asks for: as they are "
                       "for one range, multipart/byteranges for several",
        "content": {OCTET_STREAM: binary_schema, "multipart/byteranges": binary_schema},
        "headers": described({"Content-Range": "Where the part is in the file (one range)"})
    }} | errors(400, 416)


# The openapi_extra= of a route answering with a file (LargeFileResponse): parts of it can be
# asked for with a Range header (RFC 9110).  No pattern: Starlette skips the parts of one
# that it cannot read, so no simple pattern says which it takes.
RANGE_REQUESTS: dict[str, Any] = {"parameters": [{
    "name": "Range", "in": "header", "required": False,
    "description": "Only these bytes of the file, e.g. bytes=0-1023 or bytes=0-9,100-: a 206",
    "schema": {"type": "string", "examples": ["bytes=0-99"]}}]}


def described(headers: dict[str, str]) -> dict[str, Any]:
    """Response headers as a schema has them, from ``{name: what it says}``."""
    return {name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()}


def tagged(model: type[BaseModel], what: str) -> Responses:
    """The ``responses=`` of a route answering ``model`` as JSON with the ``what``'s
    version as its ETag, or a 304 with no body to a client whose ``If-None-Match`` names
    that version."""
    return {200: {"model": model, "headers": described({"ETag": f"The {what}'s version"})},
            304: {"description": f"Not Modified: the {what}'s version sent in "
                                 "If-None-Match is still current"}}


DATA_ERRORS = errors(400, 404, 409, 503, 504, 507)  # subscriber reads that may fetch data
LOGIN = errors(401, 503)  # every route of a subscriber but /health (see .subscriber.access)
ROOT_ACCESS = errors(403)  # a subscriber's routes that read or subscribe to a root
UNVERIFIED = {wire.UNVERIFIED_HEADER: "Present when the answer was served from the cache "
                                      "without checking it with its source, and why"}
LAYOUT = {wire.LAYOUT_HEADER: "The array's shape, dtype, chunks and blocks (array answers)"}

# How a client authenticates, for the routes that may answer 401 (see :func:`document`);
# one requirement of a list is enough, and {} is none (a service may run open).
Security = list[dict[str, list[str]]]
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "brokerToken": {"type": "http", "scheme": "bearer", "description":
                    "The broker's token (CATERVA2_BROKER_TOKEN, or token in [broker]), "
                    "if it was started with one"},
    "publisherKey": {"type": "apiKey", "in": "header", "name": PUBLISHER_KEY_HEADER,
                     "description": "The publisher's own key (cat2pub keeps it in "
                                    "STATEDIR/publisher.key): root names are bound to it"},
    "userKey": {"type": "http", "scheme": "bearer", "description":
                "A user's API key (cat2admin --statedir DIR adduser NAME), if the "
                "subscriber was started with --require-login"},
}
PUBLISHERS: Security = [{"brokerToken": [], "publisherKey": []}, {"publisherKey": []}]
USERS: Security = [{}, {"userKey": []}]


# What the services' parameters mean, by name (the same name means the same thing on every
# route), with examples that name the example root's datasets (see the README).
PARAMETERS: dict[str, dict[str, Any]] = {
    "root": {"schema": paths.ROOT_NAME_SCHEMA, "examples": ["foo"]},
    "path": {"schema": paths.DATASET_PATH_SCHEMA,
             "examples": ["dir1/ds-2d.b2nd", "ds-hello.b2frame", "README.md"]},
    "slice_": {"description": "The selection, as in Python: per dimension an index or "
                              "start:stop[:step], separated by commas (none: everything)",
               "examples": ["0:2, 5:10"]},
    "nchunks": {"description": "Chunk numbers: numbers and ranges, e.g. 0-3,7",
                "examples": ["0-1,3"]},
    "nchunk": {"description": "A chunk's number", "examples": [1]},
    "blocks": {"description": "Block numbers within the chunk: numbers and ranges",
               "examples": ["0-1"]},
    "version": {"description": "The version the answer must be of (412 if it is no longer "
                               "the current one)"},
    "chunks": {"description": "Answer with the stored chunks the selection touches, as a "
                              "chunk stream (arrays)"},
    "buffer": {"description": "Answer with the selected items in C order as one "
                              "Blosc2-compressed buffer (up to 1 GiB)"},
    "prefer_schunk": {"description": "Sent by 0.2-era clients, whatever its value: bytes are "
                                     "then answered as one Blosc2-compressed buffer, as they "
                                     "read them (arrays do not depend on it)"},
    "indices": {"description": "Coordinates, as newer clients send them: refused (400); "
                               "select a box with slice_"},
    "filter": {"description": "A filter expression, as newer clients send it: refused (400)"},
    "field": {"description": "Only this field of a structured array's records (as an "
                             "NDArray cframe), as newer clients ask for one"},
    "accept-encoding": {"description": "blosc2: answer with the complete dataset itself (its "
                                       "Blosc2 file; an ordinary file as its Blosc2 frame, "
                                       "with Content-Encoding: blosc2), as the upstream client "
                                       "of the 2026 releases asks",
                        "examples": ["blosc2"]},
    # (/files declares its own Range, which it serves: see RANGE_REQUESTS)
    "Range": {"description": "Refused with 416: a selection is built for each request, so "
                             "byte ranges of it are not served"},
}


def document(app: FastAPI, security: Security | None = None) -> None:
    """Make ``app``'s OpenAPI schema say what its error handlers answer, and that the
    routes that may answer 401 take the credentials of ``security``; and serve its
    ``/docs`` without any CDN (see the module's docstring)."""
    from caterva2.services import docs_ui  # (a page of its own; it needs the schema's URL)

    generate = app.openapi  # FastAPI's own, which keeps what it made in app.openapi_schema

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = as_answered(generate(), security)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.version = __version__  # (the API's version is the package's)
    docs_ui.serve_offline(app)


def as_answered(schema: dict[str, Any], security: Security | None = None) -> dict[str, Any]:
    """``schema`` with FastAPI's 422 turned into our 400 where parameters can fail to
    validate (and dropped where they cannot), every error's body our JSON
    :class:`ErrorBody` (as the error handlers answer, whatever the route's own answers),
    and ``security`` on the routes that may answer 401."""
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and may_fail_validation(operation):
                responses.setdefault("400", {"description": WHY[400]})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = error_content
            for parameter in operation.get("parameters", []):
                describe(parameter)
            if security and "401" in responses:
                operation["security"] = security
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorBody", ErrorBody.model_json_schema())
    for name in ("HTTPValidationError", "ValidationError"):  # (FastAPI's 422 body: never sent)
        components.pop(name, None)
    if security:
        used = {name for requirement in security for name in requirement}
        schema["components"]["securitySchemes"] = {
            name: SECURITY_SCHEMES[name] for name in sorted(used)}
    return schema


def describe(parameter: dict[str, Any]) -> None:
    """Add what :data:`PARAMETERS` says of ``parameter``, by its name."""
    known = PARAMETERS.get(parameter["name"], {})
    schema = parameter["schema"] = {**parameter.get("schema", {}), **known.get("schema", {})}
    if "description" in known or "description" in schema:
        parameter.setdefault("description", known.get("description") or schema["description"])
    if "examples" in known:
        parameter["schema"]["examples"] = known["examples"]


def may_fail_validation(operation: dict[str, Any]) -> bool:
    """Whether FastAPI may refuse a request to ``operation`` before its handler runs: it
    takes a body, a required query parameter or a parameter that is not any string."""
    def any_string(schema: dict[str, Any]) -> bool:
        types = [s.get("type") for s in schema.get("anyOf", [schema])]
        return "string" in types and set(types) <= {"string", "null"}

    return "requestBody" in operation or any(
        (p["in"] != "path" and p.get("required")) or not any_string(p.get("schema", {}))
        for p in operation.get("parameters", []))
