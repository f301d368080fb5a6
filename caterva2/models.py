"""Wire models shared by the broker, publishers, subscribers and clients.

Everything that crosses the network as JSON is described here, so both sides of a
connection agree on one definition.  Data itself never travels as JSON: it travels as
Blosc2 chunks or cframes (see :mod:`caterva2.wire`).  Entries are validated once, where
they arrive, and travel as these objects from the publisher's roots through the
subscriber's cache to its handlers.

The client library does not use this module (it needs only httpx, numpy and blosc2): it
reads the same JSON as plain dicts.

Metadata is checked against sane bounds where it arrives (:data:`MAX_NCHUNKS` chunks per
dataset, chunks of at most :data:`MAX_CHUNKSIZE` bytes, shapes, chunks and blocks that agree
with each other and with the chunk count, a dtype and compression parameters that Blosc2
can use): a subscriber never builds a replica from metadata it could not honour, however
absurd what a publisher sends.  A :class:`DatasetEntry` whose metadata fails these checks
becomes an unreadable entry that says why, so one bad dataset never breaks its root.
"""
from __future__ import annotations

import logging
import math
from typing import Annotated, Any, Literal, TypeVar, Union

import blosc2
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from caterva2 import paths

# A replica open at the subscriber holds its chunk index in memory (8 bytes a chunk), and
# whole-dataset reads list every chunk: 2**22 chunks keep that to 32 MB (a 4 TB dataset in
# chunks of 1 MB).  The largest chunk is Blosc2's own largest buffer (2 GiB less headers).
MAX_NCHUNKS = 2**22
MAX_CHUNKSIZE = blosc2.MAX_BUFFERSIZE
MAX_NDIM = blosc2.MAX_DIM


class RootInfo(BaseModel):
    """A root as the broker knows it: its name and the publisher serving it."""

    name: Annotated[str, AfterValidator(paths.check_root_name),
                    Field(json_schema_extra=paths.ROOT_NAME_SCHEMA)]
    # HOST:PORT of the publisher (http://HOST:PORT is accepted and stored as HOST:PORT)
    http: Annotated[str, AfterValidator(paths.check_address),
                    Field(json_schema_extra=paths.ADDRESS_SCHEMA)]


class ListedRoot(RootInfo):
    """A root as the broker lists it: ``reachable`` is False once its publisher has not
    answered the broker for a while (see :mod:`caterva2.services.broker`)."""

    reachable: bool = True


Root = TypeVar("Root", bound=RootInfo)


def valid_roots(data: Any) -> dict[str, RootInfo]:
    """``{name: RootInfo}`` from JSON (a state file, the broker's answer), leaving out and
    logging entries that are not valid roots (e.g. ``../x`` from an older version)."""
    return _valid(data, RootInfo)


def valid_listing(data: Any) -> dict[str, ListedRoot]:
    """``{name: ListedRoot}`` from the broker's answer to ``GET /api/roots``, as
    :func:`valid_roots` does."""
    return _valid(data, ListedRoot)


def _valid(data: Any, model: type[Root]) -> dict[str, Root]:
    roots = {}
    for name, info in (data.items() if isinstance(data, dict) else ()):
        try:
            roots[name] = model.model_validate(info)
        except ValueError as e:
            logging.getLogger("caterva2").warning("ignoring root %s: %s", paths.shorten(name),
                                                  str(e).splitlines()[-1].strip())
    return roots


class SChunkMeta(BaseModel):
    """The super-chunk part of a dataset's metadata (sizes describe the source)."""

    blocksize: int
    cbytes: int
    chunkshape: int
    chunksize: int
    contiguous: bool
    cparams: dict[str, Any]
    cratio: float
    nbytes: int
    typesize: int
    nchunks: int
    vlmeta: dict[str, Any] = {}

    @model_validator(mode="after")
    def _within_bounds(self) -> SChunkMeta:
        for name in ("blocksize", "cbytes", "chunkshape", "chunksize", "nbytes", "nchunks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is negative ({getattr(self, name)})")
        if self.typesize < 1:
            raise ValueError(f"typesize must be at least 1, not {self.typesize}")
        if self.nchunks > MAX_NCHUNKS:
            raise ValueError(f"{self.nchunks} chunks: more than the {MAX_NCHUNKS} a dataset "
                             "may have")
        if self.chunksize > MAX_CHUNKSIZE:
            raise ValueError(f"chunks of {self.chunksize} bytes: more than Blosc2's maximum "
                             f"of {MAX_CHUNKSIZE}")
        if self.chunkshape * self.typesize != self.chunksize:
            raise ValueError(f"chunksize {self.chunksize} is not chunkshape {self.chunkshape} "
                             f"times typesize {self.typesize}")
        if self.nchunks and not self.chunksize:
            raise ValueError(f"{self.nchunks} chunks of 0 bytes")
        if self.nbytes > self.nchunks * self.chunksize:
            raise ValueError(f"{self.nbytes} bytes do not fit in {self.nchunks} chunks of "
                             f"{self.chunksize}")
        _check_cparams(self.cparams)
        return self


def _check_cparams(cparams: dict[str, Any]) -> None:
    """ValueError unless Blosc2 can use these compression parameters."""
    try:
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in cparams.items())
        hash(key)
    except TypeError:  # (a value no parameter can have)
        key = None
    if key is None or key not in _GOOD_CPARAMS:
        from caterva2.metadata import cparams_from_dict  # (that module builds on this one)
        try:
            cparams_from_dict(cparams)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"compression parameters Blosc2 cannot use ({e!r})") from None
        if key is not None and len(_GOOD_CPARAMS) < 1024:  # (datasets mostly share a few)
            _GOOD_CPARAMS.add(key)


_GOOD_CPARAMS: set[tuple] = set()


def _itemsize(descr: Any) -> int:
    """The item size of a dtype description; ValueError if NumPy cannot use it."""
    if isinstance(descr, str) and descr in _ITEMSIZES:
        return _ITEMSIZES[descr]
    from caterva2.metadata import dtype_from_descr  # (that module builds on this one)
    try:
        itemsize = dtype_from_descr(descr).itemsize
    except (TypeError, ValueError) as e:
        raise ValueError(f"dtype description NumPy cannot use ({e})") from None
    if isinstance(descr, str) and len(_ITEMSIZES) < 1024:
        _ITEMSIZES[descr] = itemsize
    return itemsize


_ITEMSIZES: dict[str, int] = {}


class ArrayMeta(BaseModel):
    """Metadata of a ``.b2nd`` dataset (a Blosc2 NDArray)."""

    kind: Literal["ndarray"] = "ndarray"
    dtype: str
    # numpy's own portable description of the dtype (see numpy.lib.format), so that
    # structured dtypes survive the trip without evaluating any text.
    dtype_descr: Any
    ndim: int
    shape: list[int]
    ext_shape: list[int]
    chunks: list[int]
    ext_chunks: list[int]
    blocks: list[int]
    blocksize: int
    chunksize: int
    size: int
    schunk: SChunkMeta

    @model_validator(mode="after")
    def _consistent(self) -> ArrayMeta:
        dims = (self.shape, self.ext_shape, self.chunks, self.ext_chunks, self.blocks)
        if not 0 <= self.ndim <= MAX_NDIM or any(len(d) != self.ndim for d in dims):
            raise ValueError(f"ndim {self.ndim} does not match shape, chunks and blocks (or "
                             f"is more than {MAX_NDIM})")
        if any(x < 0 for d in dims for x in d):
            raise ValueError("negative sizes in shape, chunks or blocks")
        for n, c, b in zip(self.shape, self.chunks, self.blocks):
            if (n and not c) or (c and not b) or b > c:
                raise ValueError(f"shape {self.shape}, chunks {self.chunks} and blocks "
                                 f"{self.blocks} do not fit each other")
        grid = math.prod(-(-n // c) if c else 0 for n, c in zip(self.shape, self.chunks))
        if grid != self.schunk.nchunks:
            raise ValueError(f"shape {self.shape} in chunks {self.chunks} makes {grid} chunks, "
                             f"not {self.schunk.nchunks}")
        ext_shape = [-(-n // c) * c if c else 0 for n, c in zip(self.shape, self.chunks)]
        ext_chunks = [-(-c // b) * b if b else 0 for c, b in zip(self.chunks, self.blocks)]
        if self.ext_shape != ext_shape or self.ext_chunks != ext_chunks:
            raise ValueError("ext_shape or ext_chunks do not follow from shape, chunks and "
                             "blocks")
        sc = self.schunk
        if math.prod(ext_chunks) * sc.typesize != sc.chunksize:
            raise ValueError(f"chunksize {sc.chunksize} is not that of chunks {ext_chunks} of "
                             f"{sc.typesize} bytes")
        itemsize = _itemsize(self.dtype_descr)
        if itemsize != sc.typesize:
            raise ValueError(f"items of {itemsize} bytes, but typesize {sc.typesize}")
        return self


class FrameMeta(BaseModel):
    """Metadata of a ``.b2frame`` dataset (a Blosc2 SChunk of bytes)."""

    kind: Literal["frame"] = "frame"
    schunk: SChunkMeta

    @model_validator(mode="after")
    def _consistent(self) -> FrameMeta:
        _check_items(self.schunk)
        return self


class FileMeta(BaseModel):
    """Metadata of an ordinary file, served compressed as a Blosc2 SChunk."""

    kind: Literal["file"] = "file"
    schunk: SChunkMeta
    size: int
    mtime: float

    @model_validator(mode="after")
    def _consistent(self) -> FileMeta:
        _check_items(self.schunk)
        if self.size < 0:
            raise ValueError(f"size is negative ({self.size})")
        return self


def _check_items(sc: SChunkMeta) -> None:
    """A SChunk of items: whole items, in as many chunks as they fill."""
    if sc.nbytes % sc.typesize:
        raise ValueError(f"{sc.nbytes} bytes are not whole items of {sc.typesize}")
    needed = -(-sc.nbytes // sc.chunksize) if sc.chunksize else 0
    if needed != sc.nchunks:
        raise ValueError(f"{sc.nbytes} bytes in chunks of {sc.chunksize} make {needed} "
                         f"chunks, not {sc.nchunks}")


DatasetMeta = Annotated[ArrayMeta | FrameMeta | FileMeta, Field(discriminator="kind")]
_KINDS = ("ndarray", "frame", "file")
AnyMeta = Union[ArrayMeta, FrameMeta, FileMeta]


class DatasetEntry(BaseModel):
    """One dataset of a root: its version tag and metadata.

    A dataset whose file cannot be read (being written, or damaged) has no ``meta`` and an
    ``error`` saying why: it is listed, and reading it is a clear error until a readable
    version appears.  So is one whose metadata is malformed or out of bounds: validating
    such an entry gives an unreadable entry saying what was refused, not an error (an
    entry without even a version is still an error).
    """

    version: str
    meta: DatasetMeta | None = None
    error: str | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _unreadable_if_refused(cls, data: Any, handler: ValidatorFunctionWrapHandler
                               ) -> DatasetEntry:
        try:
            return handler(data)
        except ValidationError as e:
            version = data.get("version") if isinstance(data, dict) else None
            if not isinstance(version, str):
                raise
            return cls.unreadable(version, f"metadata refused: {validation_reason(e)}")

    @classmethod
    def unreadable(cls, version: str, error: str) -> DatasetEntry:
        """The entry of a dataset that is listed but cannot be read now."""
        return cls(version=version, meta=None, error=error)


class RootIndex(BaseModel):
    """Every dataset of a root, by relative path (ordinary files by their own name).

    An entry that is not even an entry (no version) is listed as unreadable, with the
    placeholder version ``invalid``: one bad dataset never breaks its root.
    """

    datasets: dict[str, DatasetEntry]

    @field_validator("datasets", mode="before")
    @classmethod
    def _versioned(cls, datasets: Any) -> Any:
        if not isinstance(datasets, dict):
            return datasets
        return {path: entry if isinstance(entry, DatasetEntry) or (
                    isinstance(entry, dict) and isinstance(entry.get("version"), str))
                else {"version": "invalid", "error": "malformed entry (no version)"}
                for path, entry in datasets.items()}


def validation_reason(error: ValidationError, most: int = 3) -> str:
    """The first few problems of a validation error, in one line (where: what)."""
    parts = []
    for problem in error.errors()[:most]:
        loc = [x for i, x in enumerate(problem["loc"])  # (without the kind's tag: meta.shape)
               if not (i and problem["loc"][i - 1] == "meta" and x in _KINDS)]
        where = ".".join(str(x) for x in loc)
        what = str(problem["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts)


class RootEvent(BaseModel):
    """Broker → subscribers: a root was registered (or moved to another address)."""

    kind: Literal["root"] = "root"
    root: RootInfo


MAX_EVENT_PATHS = 1000  # paths in one change event (a publisher sends more in several)
MAX_VERSION_LENGTH = 256  # characters in a version tag
# A header with which a publisher proves that it is the one a root name is bound to (see
# caterva2.services.broker); the key is the publisher's own, kept in its state directory.
PUBLISHER_KEY_HEADER = "Caterva2-Publisher-Key"
# The broker's answer to a registration says in this header where notifications go (a
# Notifications as JSON); a broker that does not send it takes them itself.
NOTIFICATIONS_HEADER = "Caterva2-Notifications"


class ChangeEvent(BaseModel):
    """Publisher → broker → subscribers: datasets of a root changed.

    ``changed`` maps each path to its new version tag; ``deleted`` lists paths that are
    gone.  At most :data:`MAX_EVENT_PATHS` paths in all, each a safe relative path (see
    :func:`caterva2.paths.check_relpath`), versions of at most :data:`MAX_VERSION_LENGTH`
    characters.
    """

    kind: Literal["change"] = "change"
    root: Annotated[str, AfterValidator(paths.check_root_name),
                    Field(json_schema_extra=paths.ROOT_NAME_SCHEMA)]
    # (what _within_bounds checks, as the JSON Schema says it; all paths: at most MAX_EVENT_PATHS)
    changed: dict[str, str] = Field({}, json_schema_extra={
        "propertyNames": paths.DATASET_PATH_SCHEMA, "maxProperties": MAX_EVENT_PATHS,
        "additionalProperties": {"type": "string", "minLength": 1,
                                 "maxLength": MAX_VERSION_LENGTH}})
    deleted: list[str] = Field([], json_schema_extra={
        "items": paths.DATASET_PATH_SCHEMA, "maxItems": MAX_EVENT_PATHS})

    @model_validator(mode="after")
    def _within_bounds(self) -> ChangeEvent:
        if len(self.changed) + len(self.deleted) > MAX_EVENT_PATHS:
            raise ValueError(f"{len(self.changed) + len(self.deleted)} paths in one event: "
                             f"more than {MAX_EVENT_PATHS} (send them in several)")
        for path in (*self.changed, *self.deleted):
            paths.check_relpath(path)
        for version in self.changed.values():
            if not 0 < len(version) <= MAX_VERSION_LENGTH:
                raise ValueError(f"version tag {paths.shorten(version)}: 1 to "
                                 f"{MAX_VERSION_LENGTH} characters")
        return self


Event = Annotated[RootEvent | ChangeEvent, Field(discriminator="kind")]


class Notifications(BaseModel):
    """Broker → publishers and subscribers: where the deployment's notifications go.

    ``engine`` ``"broker"``: through the broker (events posted to it, its WebSocket
    ``/api/events``); ``"nats"``: on NATS JetStream, at ``servers`` (``nats://HOST:PORT``),
    in stream ``stream`` on the subjects of ``deployment`` (see
    :mod:`caterva2.services.nats_bus`).
    """

    engine: Literal["broker", "nats"] = "broker"
    servers: list[Annotated[str, Field(pattern=r"^(nats|tls)://[^/@\s]+$", max_length=300)]
                  ] = Field(default_factory=list, max_length=64)
    deployment: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] | None = None
    stream: Annotated[str, Field(pattern=r"^CATERVA2_[A-Za-z0-9_-]{1,32}$")] | None = None


def chunk_layout(meta: AnyMeta) -> tuple:
    """What decides which chunks a selection needs and how they decode: two versions of a
    dataset with the same layout can share chunks."""
    sc = meta.schunk
    if isinstance(meta, ArrayMeta):
        return (meta.kind, tuple(meta.shape), meta.dtype, tuple(meta.chunks),
                tuple(meta.blocks), sc.chunkshape, sc.typesize, sc.nbytes)
    return (meta.kind, sc.chunkshape, sc.typesize, sc.nbytes)


def user_info(meta: AnyMeta) -> dict[str, Any]:
    """The metadata as shown to users (``info``): without internal bookkeeping keys."""
    return meta.model_dump(exclude={"kind", "dtype_descr"})
