"""Wire models shared by the broker, publishers, subscribers and clients.

Everything that crosses the network as JSON is described here, so both sides of a
connection agree on one definition.  Data itself never travels as JSON: it travels as
Blosc2 chunks or cframes (see :mod:`caterva2.wire`).  Entries are validated once, where
they arrive, and travel as these objects from the publisher's roots through the
subscriber's cache to its handlers.

The client library does not use this module (it needs only httpx, numpy and blosc2): it
reads the same JSON as plain dicts.
"""
from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, Field

from caterva2 import paths


class RootInfo(BaseModel):
    """A root as the broker knows it: its name and the publisher serving it."""

    name: Annotated[str, AfterValidator(paths.check_root_name)]  # one path component
    http: str  # host:port of the publisher


def valid_roots(data: Any) -> dict[str, RootInfo]:
    """``{name: RootInfo}`` from JSON (a state file, the broker's answer), leaving out and
    logging entries that are not valid roots (e.g. ``../x`` from an older version)."""
    roots = {}
    for name, info in (data.items() if isinstance(data, dict) else ()):
        try:
            roots[name] = RootInfo.model_validate(info)
        except ValueError as e:
            logging.getLogger("caterva2").warning("ignoring root %r: %s", name,
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


class FrameMeta(BaseModel):
    """Metadata of a ``.b2frame`` dataset (a Blosc2 SChunk of bytes)."""

    kind: Literal["frame"] = "frame"
    schunk: SChunkMeta


class FileMeta(BaseModel):
    """Metadata of an ordinary file, served compressed as a Blosc2 SChunk."""

    kind: Literal["file"] = "file"
    schunk: SChunkMeta
    size: int
    mtime: float


DatasetMeta = Annotated[ArrayMeta | FrameMeta | FileMeta, Field(discriminator="kind")]
AnyMeta = Union[ArrayMeta, FrameMeta, FileMeta]


class DatasetEntry(BaseModel):
    """One dataset of a root: its version tag and metadata.

    A dataset whose file cannot be read (being written, or damaged) has no ``meta`` and an
    ``error`` saying why: it is listed, and reading it is a clear error until a readable
    version appears.
    """

    version: str
    meta: DatasetMeta | None = None
    error: str | None = None

    @classmethod
    def unreadable(cls, version: str, error: str) -> DatasetEntry:
        """The entry of a dataset that is listed but cannot be read now."""
        return cls(version=version, meta=None, error=error)


class RootIndex(BaseModel):
    """Every dataset of a root, by relative path (ordinary files by their own name)."""

    datasets: dict[str, DatasetEntry]


class RootEvent(BaseModel):
    """Broker → subscribers: a root was registered (or moved to another address)."""

    kind: Literal["root"] = "root"
    root: RootInfo


class ChangeEvent(BaseModel):
    """Publisher → broker → subscribers: datasets of a root changed.

    ``changed`` maps each path to its new version tag; ``deleted`` lists paths that are gone.
    """

    kind: Literal["change"] = "change"
    root: str
    changed: dict[str, str] = {}
    deleted: list[str] = []


Event = Annotated[RootEvent | ChangeEvent, Field(discriminator="kind")]


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
