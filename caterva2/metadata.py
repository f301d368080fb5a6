"""Metadata of Blosc2 objects, as the wire models of :mod:`caterva2.models`.

What a publisher reads from a stored dataset (shape, chunks, compression, user
attributes) and what a subscriber needs to build an empty replica of it.  Sizes describe
the dataset at its source; no filesystem path is ever included.
"""
from __future__ import annotations

from typing import Any

import blosc2
import numpy as np

from caterva2.jsonable import jsonable
from caterva2.models import ArrayMeta, FileMeta, FrameMeta, SChunkMeta


def cparams_dict(cparams: Any) -> dict[str, Any]:
    """Compression parameters as plain JSON values (codec and filters as numbers)."""
    def num(v: Any) -> Any:
        return int(v.value) if hasattr(v, "value") else v

    return {
        "codec": num(cparams.codec),
        "codec_meta": int(cparams.codec_meta),
        "clevel": int(cparams.clevel),
        "filters": [num(f) for f in cparams.filters],
        "filters_meta": [int(m) for m in cparams.filters_meta],
        "typesize": int(cparams.typesize),
        "blocksize": int(cparams.blocksize),
        "splitmode": num(cparams.splitmode),
        "use_dict": bool(cparams.use_dict),
    }


def cparams_from_dict(d: dict[str, Any]) -> blosc2.CParams:
    """Inverse of :func:`cparams_dict`."""
    return blosc2.CParams(
        codec=blosc2.Codec(d["codec"]), codec_meta=d.get("codec_meta", 0), clevel=d["clevel"],
        filters=[blosc2.Filter(f) for f in d["filters"]], filters_meta=d["filters_meta"],
        typesize=d["typesize"], blocksize=d.get("blocksize", 0),
        splitmode=blosc2.SplitMode(d.get("splitmode", blosc2.SplitMode.AUTO_SPLIT)),
        use_dict=d.get("use_dict", False),
    )


def vlmeta_dict(schunk: blosc2.SChunk) -> dict[str, Any]:
    """User attributes of a super-chunk as plain JSON values."""
    return {str(k): jsonable(v) for k, v in schunk.vlmeta.getall().items()}


def schunk_meta(schunk: blosc2.SChunk) -> SChunkMeta:
    """The ``schunk`` part of the metadata: sizes at the source, no filesystem path."""
    return SChunkMeta(
        blocksize=int(schunk.blocksize),
        cbytes=int(schunk.cbytes),
        chunkshape=int(schunk.chunkshape),
        chunksize=int(schunk.chunksize),
        contiguous=bool(schunk.contiguous),
        cparams=cparams_dict(schunk.cparams),
        cratio=float(schunk.cratio) if schunk.cbytes else 0.0,
        nbytes=int(schunk.nbytes),
        typesize=int(schunk.typesize),
        nchunks=int(schunk.nchunks),
        vlmeta=vlmeta_dict(schunk),
    )


def array_meta(array: blosc2.NDArray) -> ArrayMeta:
    """Metadata of an NDArray, keyed as in the Caterva2 README."""
    return ArrayMeta(
        dtype=str(array.dtype),
        dtype_descr=jsonable(np.lib.format.dtype_to_descr(array.dtype)),
        ndim=array.ndim,
        shape=list(array.shape),
        ext_shape=list(array.ext_shape),
        chunks=list(array.chunks),
        ext_chunks=list(array.ext_chunks),
        blocks=list(array.blocks),
        blocksize=int(array.schunk.blocksize),
        chunksize=int(array.schunk.chunksize),
        size=int(array.schunk.nbytes),
        schunk=schunk_meta(array.schunk),
    )


def frame_meta(schunk: blosc2.SChunk) -> FrameMeta:
    """Metadata of a ``.b2frame`` dataset."""
    return FrameMeta(schunk=schunk_meta(schunk))


def file_meta(compressed: blosc2.SChunk, size: int, mtime: float) -> FileMeta:
    """Metadata of an ordinary file of ``size`` bytes, served as the SChunk ``compressed``."""
    return FileMeta(schunk=schunk_meta(compressed), size=size, mtime=mtime)


def dtype_from_descr(descr: Any) -> np.dtype:
    """Rebuild a dtype from :func:`numpy.lib.format.dtype_to_descr` output sent as JSON."""
    def tuples(d: Any) -> Any:
        if isinstance(d, list):
            return [tuple(tuples(x) for x in field) if isinstance(field, list) else field
                    for field in d]
        return d

    return np.lib.format.descr_to_dtype(tuples(descr))
