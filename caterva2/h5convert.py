"""HDF5 ↔ Blosc2 conversion, shared by ``cat2import``, ``cat2export`` and HDF5 roots.

Mapping (the same in all three uses):

- an HDF5 group is a directory; its attributes go to the user attributes (vlmeta) of an
  empty SChunk ``GROUP/__attrs__.b2frame`` (written only when the group has attributes);
- an HDF5 dataset ``NAME`` is an NDArray ``NAME.b2nd`` with the same shape, dtype and chunk
  shape (a contiguous dataset gets chunks chosen by Blosc2); its attributes are the vlmeta;
- where HDF5 chunks are stored with the Blosc2 filter (``hdf5plugin.Blosc2``), each one holds
  a single Blosc2 chunk inside a small frame: that chunk is carried over as is, without
  recompressing, whenever its block geometry matches (otherwise it is recompressed);
- ``.b2frame`` SChunks and ordinary files become 1-D ``uint8`` datasets with the attribute
  ``caterva2_kind`` set to ``"b2frame"`` or ``"file"``, and come back as such on import;
- a null-dataspace HDF5 dataset (``h5py.Empty``) becomes an empty 1-D NDArray whose vlmeta
  has ``caterva2_kind = "hdf5-null"``;
- variable-length strings (h5py's default for ``str``) become fixed-size ones as long as the
  longest: Unicode (``<U``) for UTF-8 text, bytes (``S``) for ASCII (see
  :func:`fixed_string_dtype`);
- a soft link to a dataset is that dataset, converted at the link's path too; soft links to
  groups, dangling soft links and external links are skipped.

Everything works chunk by chunk: memory stays bounded by a few chunks.
"""
from __future__ import annotations

import math
import os
import pathlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import blosc2
import h5py
import hdf5plugin
import numpy as np

from caterva2.chunks import chunk_grid, chunk_slices, is_uninit_chunk

BLOSC2_FILTER_ID = 32026  # hdf5plugin's registered id for the Blosc2 HDF5 filter
KIND_ATTR = "caterva2_kind"
NULL_KIND = "hdf5-null"
GROUP_ATTRS = "__attrs__.b2frame"
FILE_CHUNKSIZE = 1 << 20
IMPORT_CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 1, "filters": [blosc2.Filter.SHUFFLE]}

# Codecs and filters that every build of the HDF5 Blosc2 filter can decompress.
CodecName = Literal["blosclz", "lz4", "lz4hc", "zlib", "zstd"]
PORTABLE_CODECS: dict[blosc2.Codec, CodecName] = {
    blosc2.Codec.BLOSCLZ: "blosclz", blosc2.Codec.LZ4: "lz4", blosc2.Codec.LZ4HC: "lz4hc",
    blosc2.Codec.ZLIB: "zlib", blosc2.Codec.ZSTD: "zstd"}
PORTABLE_FILTERS = {blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE, blosc2.Filter.BITSHUFFLE,
                    blosc2.Filter.DELTA, blosc2.Filter.TRUNC_PREC}

Warn = Callable[[str], None]


class Unsupported(Exception):
    """An HDF5 object or value that has no Blosc2 counterpart (it is skipped)."""


class ConversionError(Exception):
    """Bad input for a conversion: the message is one line, meant for the user."""


# ---------------------------------------------------------------------------
# Types and attributes
# ---------------------------------------------------------------------------

def vlen_string(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is h5py's variable-length string (its default for ``str``)."""
    info = h5py.check_string_dtype(dtype)
    return info is not None and info.length is None


def unsupported_reason(dtype: np.dtype) -> str | None:
    """Why an HDF5 dataset of ``dtype`` cannot be converted, or None if it can."""
    if vlen_string(dtype):
        return None  # (made fixed-size: see fixed_string_dtype)
    if h5py.check_dtype(ref=dtype) is not None:
        return "object or region references"
    if h5py.check_dtype(vlen=dtype) is not None:
        return "variable-length type"
    if dtype.hasobject:
        return "variable-length or reference fields"
    if dtype.subdtype is not None:
        return "HDF5 array type"
    if dtype.kind == "V" and dtype.names is None:
        return "opaque type"
    return None


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _native(value: Any) -> Any:
    """An attribute value as a plain Python value (numbers, str, lists, dicts, None)."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, (h5py.Reference, h5py.RegionReference)):
        raise Unsupported("object reference")
    if isinstance(value, (bytes, np.bytes_)):
        return _decode(bytes(value))
    if isinstance(value, np.void):
        if value.dtype.names is None:
            raise Unsupported("opaque value")
        return {name: _native(value[name]) for name in value.dtype.names}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufcS" and value.dtype.names is None:
            return _native(value.tolist())
        return [_native(v) for v in value]
    if isinstance(value, np.generic):
        return _native(value.item())
    if isinstance(value, (list, tuple)):
        return [_native(v) for v in value]
    return value


def read_attrs(obj: h5py.HLObject, where: str, warn: Warn) -> dict[str, Any]:
    """HDF5 attributes of ``obj`` as vlmeta values; unconvertible ones are skipped."""
    out = {}
    for name in obj.attrs:
        try:
            out[name] = _native(obj.attrs[name])
        except Exception as e:  # noqa: BLE001 - h5py raises several kinds for odd types
            reason = e if isinstance(e, Unsupported) else f"unreadable: {e}"
            warn(f"{where or '/'}: attribute {name!r} ({reason}), skipped")
    return out


def _attr_value(value: Any) -> Any:
    """A vlmeta value as something h5py can store as an attribute."""
    if value is None:
        return h5py.Empty("f8")
    if isinstance(value, (str, bool, int, float, complex, np.generic)):
        return value
    if isinstance(value, bytes):
        return np.bytes_(value)
    if isinstance(value, dict):
        fields = [_attr_value(v) for v in value.values()]
        dtypes = [h5py.string_dtype() if isinstance(v, str) else np.asarray(v).dtype
                  for v in fields]
        return np.array(tuple(fields), dtype=list(zip(value.keys(), dtypes)))[()]
    array = np.asarray(value)
    if array.dtype.kind == "U":
        return np.array(value, dtype=h5py.string_dtype())
    if array.dtype.kind == "O":
        raise Unsupported("mixed or ragged list")
    return array


def write_attrs(obj: h5py.HLObject, vlmeta: dict[str, Any], where: str, warn: Warn) -> None:
    """Store vlmeta values as HDF5 attributes of ``obj``."""
    for name, value in vlmeta.items():
        try:
            obj.attrs[name] = _attr_value(value)
        except Exception as e:  # noqa: BLE001 - numpy/h5py raise several kinds
            warn(f"{where or '/'}: attribute {name!r} ({e}), skipped")


# ---------------------------------------------------------------------------
# Dataset geometry and chunks
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How an HDF5 dataset is laid out as a Blosc2 NDArray."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    blocks: tuple[int, ...]
    cparams: dict[str, Any]
    passthrough: bool  # HDF5 chunks are Blosc2 chunks of this geometry: copy them as stored
    null: bool = False  # HDF5 null dataspace

    @property
    def nchunks(self) -> int:
        return math.prod(chunk_grid(self.shape, self.chunks))


def _blosc2_chunk(raw: bytes, chunks: tuple[int, ...], itemsize: int
                  ) -> tuple[bytes, tuple[int, ...], Any] | None:
    """The Blosc2 chunk inside a chunk stored by the HDF5 Blosc2 filter.

    Returns (chunk, blocks, cparams), or None if it is not one chunk laid out as an
    NDArray chunk of shape ``chunks`` would be.
    """
    try:
        schunk = blosc2.schunk_from_cframe(raw, copy=False)
        if schunk.nchunks != 1:
            return None
        chunk = schunk.get_chunk(0)
        if "b2nd" in schunk.meta:
            meta = schunk.meta["b2nd"]
            if tuple(meta[2]) != chunks or tuple(meta[3]) != chunks:
                return None
            blocks = tuple(meta[4])
        else:
            blocksize = struct.unpack_from("<i", chunk, 8)[0]
            if len(chunks) != 1 or blocksize % itemsize:
                return None
            blocks = (blocksize // itemsize,)
        cparams = schunk.cparams
    except Exception:  # noqa: BLE001 - anything unexpected means: not a chunk we can copy
        return None
    nbytes, blocksize = struct.unpack_from("<ii", chunk, 4)
    padded = math.prod(-(-c // b) * b for c, b in zip(chunks, blocks)) * itemsize
    if nbytes != padded or blocksize != math.prod(blocks) * itemsize:
        return None
    return chunk, blocks, cparams


def _read_stored(dset: h5py.Dataset, offset: tuple[int, ...]) -> bytes | None:
    try:
        mask, raw = dset.id.read_direct_chunk(offset)
    except Exception:  # noqa: BLE001 - an unallocated chunk (fill value)
        return None
    return None if mask else raw


def _blosc2_layout(dset: h5py.Dataset) -> tuple[tuple[int, ...], dict[str, Any]] | None:
    """Blocks and cparams of a dataset stored with the Blosc2 filter alone, else None."""
    plist = dset.id.get_create_plist()
    if dset.chunks is None or plist.get_nfilters() != 1 \
            or plist.get_filter(0)[0] != BLOSC2_FILTER_ID or dset.id.get_num_chunks() == 0:
        return None
    raw = _read_stored(dset, dset.id.get_chunk_info(0).chunk_offset)
    found = raw and _blosc2_chunk(raw, dset.chunks, dset.dtype.itemsize)
    if not found:
        return None
    _, blocks, cp = found
    return blocks, {"codec": cp.codec, "clevel": cp.clevel, "filters": list(cp.filters),
                    "filters_meta": list(cp.filters_meta)}


def dataset_layout(dset: h5py.Dataset, cparams: dict[str, Any] | None = None) -> Layout:
    """The NDArray geometry for ``dset``; raises Unsupported for what cannot be converted.

    ``cparams`` are used where chunks have to be (re)compressed.
    """
    dtype = dset.dtype
    reason = unsupported_reason(dtype)
    if reason:
        raise Unsupported(reason)
    cparams = dict(cparams or IMPORT_CPARAMS)
    if vlen_string(dtype):
        dtype = fixed_string_dtype(dset)
    if dset.shape is None:
        return Layout((0,), dtype, (0,), (0,), cparams, False, null=True)
    shape = tuple(dset.shape)
    found = _blosc2_layout(dset) if dtype == dset.dtype else None
    if found:
        return Layout(shape, dtype, tuple(dset.chunks), found[0], found[1], True)
    chunks, blocks = blosc2.compute_chunks_blocks(shape, chunks=dset.chunks, dtype=dtype)
    return Layout(shape, dtype, tuple(chunks), tuple(blocks), cparams, False)


STRING_SCAN_ELEMENTS = 1 << 20  # strings read at a time to find the longest (bounded memory)


def _strings(dset: h5py.Dataset, region: Any = ()) -> np.ndarray:
    """A region of a variable-length string dataset as an object array of ``str`` (UTF-8
    text, undecodable bytes replaced) or of ``bytes`` (ASCII)."""
    if h5py.check_string_dtype(dset.dtype).encoding == "utf-8":
        return np.asarray(dset.asstr(errors="replace")[region], dtype=object)
    return np.asarray(dset[region], dtype=object)


def fixed_string_dtype(dset: h5py.Dataset) -> np.dtype:
    """The fixed-size dtype for a dataset of variable-length strings: ``<U`` (UTF-8 text)
    or ``S`` (ASCII) as long as its longest string (at least 1), found by reading it a
    slab at a time."""
    longest = 0
    if dset.shape:
        row = math.prod(dset.shape[1:]) or 1
        step = max(1, STRING_SCAN_ELEMENTS // row)
        for start in range(0, dset.shape[0], step):
            values = _strings(dset, slice(start, start + step)).ravel()
            longest = max(longest, max(map(len, values), default=0))
    elif dset.shape == ():
        longest = len(_strings(dset)[()])
    kind = "U" if h5py.check_string_dtype(dset.dtype).encoding == "utf-8" else "S"
    return np.dtype(f"{'<' if kind == 'U' else ''}{kind}{max(longest, 1)}")


def new_array(layout: Layout, urlpath: str | None = None,
              vlmeta: dict[str, Any] | None = None) -> blosc2.NDArray:
    """An NDArray of ``layout`` with every chunk uninitialised (filled by copy_chunk)."""
    array = blosc2.uninit(layout.shape, layout.dtype, chunks=layout.chunks,
                          blocks=layout.blocks, cparams=blosc2.CParams(**layout.cparams),
                          urlpath=urlpath, contiguous=True, mode="w")
    for key, value in (vlmeta or {}).items():
        array.schunk.vlmeta[key] = value
    return array


def read_chunk(dset: h5py.Dataset, layout: Layout, nchunk: int) -> bytes | np.ndarray:
    """Chunk ``nchunk`` of ``dset``: the stored Blosc2 chunk when it can be copied as is,
    else the decompressed data (a NumPy array)."""
    if layout.dtype != dset.dtype and vlen_string(dset.dtype):
        region = chunk_slices(nchunk, layout.shape, layout.chunks) if layout.shape else ()
        return _strings(dset, region).astype(layout.dtype)
    if not layout.shape:
        return np.asarray(dset[()])
    region = chunk_slices(nchunk, layout.shape, layout.chunks)
    if layout.passthrough:
        raw = _read_stored(dset, tuple(r.start for r in region))
        found = raw and _blosc2_chunk(raw, layout.chunks, layout.dtype.itemsize)
        if found and found[1] == layout.blocks:
            return found[0]
    return dset[region]


def write_chunk(out: blosc2.NDArray, layout: Layout, nchunk: int,
                chunk: bytes | np.ndarray) -> None:
    """Store what :func:`read_chunk` returned as chunk ``nchunk`` of ``out``."""
    if isinstance(chunk, bytes):
        out.schunk.update_chunk(nchunk, chunk)
    elif not layout.shape:
        out[()] = chunk
    else:
        out[chunk_slices(nchunk, layout.shape, layout.chunks)] = chunk


def copy_chunk(dset: h5py.Dataset, layout: Layout, out: blosc2.NDArray, nchunk: int) -> None:
    """Write chunk ``nchunk`` of ``dset`` into ``out`` (as stored when possible)."""
    write_chunk(out, layout, nchunk, read_chunk(dset, layout, nchunk))


def copy_chunks(dset: h5py.Dataset, layout: Layout, out: blosc2.NDArray,
                done: Callable[[int], None] | None = None) -> None:
    """Copy every chunk of ``dset`` into ``out``, one at a time (memory: about two chunks);
    ``done(nbytes)`` is told the data bytes of each chunk copied (for a progress bar).

    Reading in a separate thread was measured slower: h5py keeps the GIL while HDF5
    decompresses, so nothing overlaps and the hand-over only adds cost.
    """
    for n in range(layout.nchunks):
        copy_chunk(dset, layout, out, n)
        if done is not None:
            region = chunk_slices(n, layout.shape, layout.chunks)
            done(math.prod(r.stop - r.start for r in region) * layout.dtype.itemsize)


def dataset_nbytes(dset: h5py.Dataset) -> int:
    """The bytes of data ``dset`` holds (as stored in memory: a variable-length value
    counts as one pointer)."""
    return (dset.size or 0) * dset.dtype.itemsize  # (size None: no dataspace)


def file_nbytes(h5: h5py.File) -> int:
    """The bytes of data of every dataset :func:`walk` finds in ``h5`` (progress bars'
    total; warnings are left to the conversion itself)."""
    return sum(dataset_nbytes(obj) for _, obj in walk(h5, lambda message: None)
               if isinstance(obj, h5py.Dataset))


# ---------------------------------------------------------------------------
# Walking an HDF5 file
# ---------------------------------------------------------------------------

def walk(group: h5py.Group, warn: Warn, prefix: str = "",
         _seen: set | None = None) -> Iterator[tuple[str, h5py.Group | h5py.Dataset]]:
    """Every group and dataset below ``group`` as (path, object), parents first.

    A soft link to a dataset gives that dataset at the link's path.  External links, soft
    links to groups (their group is walked at its own path), dangling soft links and
    further hard links to a group already visited are skipped (with a warning), so no
    object is visited through a cycle.
    """
    seen = _seen if _seen is not None else {group.id}
    for name in group:
        path = prefix + name
        try:
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                warn(f"{path}: external link to {link.filename}:{link.path}, skipped")
                continue
            soft = isinstance(link, h5py.SoftLink)
            obj = group.get(name) if soft else group[name]
            if soft and not isinstance(obj, h5py.Dataset):
                what = "dangling soft link" if obj is None else "soft link to a group"
                warn(f"{path}: {what} ({link.path}), skipped")
                continue
        except Exception as e:  # noqa: BLE001 - h5py raises several kinds
            warn(f"{path}: unreadable ({e}), skipped")
            continue
        if isinstance(obj, h5py.Dataset):
            yield path, obj
        elif isinstance(obj, h5py.Group):
            if obj.id in seen:
                warn(f"{path}: second hard link to a group already converted, skipped")
                continue
            seen.add(obj.id)
            yield path, obj
            yield from walk(obj, warn, path + "/", seen)
        else:
            warn(f"{path}: named datatype, skipped")


def check_hdf5(path: pathlib.Path) -> None:
    """Raise ConversionError unless ``path`` is an existing HDF5 file."""
    if not path.exists():
        raise ConversionError(f"{path}: no such file")
    if path.is_dir():
        raise ConversionError(f"{path}: is a directory, not an HDF5 file")
    try:
        ok = h5py.is_hdf5(str(path))
    except OSError as e:
        raise ConversionError(f"{path}: cannot read ({e.strerror or e})") from None
    if not ok:
        raise ConversionError(f"{path}: not an HDF5 file")


def partial_path(target: pathlib.Path) -> pathlib.Path:
    """Where output is written before it is renamed to ``target`` (a hidden sibling)."""
    if os.path.lexists(target):
        raise ConversionError(f"{target}: already exists (will not overwrite)")
    if not target.parent.is_dir():
        raise ConversionError(f"{target.parent}: no such directory")
    return target.parent / f".{target.name}.partial-{os.getpid()}"


@dataclass
class Report:
    """What a conversion did: objects converted, bytes of data, and what it skipped."""

    datasets: int = 0
    nbytes: int = 0
    skipped: list[str] = field(default_factory=list)

    def skip(self, message: str, warn: Warn) -> None:
        self.skipped.append(message)
        warn(message)


# ---------------------------------------------------------------------------
# Blosc2 -> HDF5
# ---------------------------------------------------------------------------

def h5_dtype(dtype: np.dtype) -> np.dtype:
    """The HDF5 dtype for an NDArray's dtype (Unicode text becomes fixed-size UTF-8)."""
    if dtype.kind == "U":
        return h5py.string_dtype("utf-8", dtype.itemsize)
    if dtype.names and any(dtype[name].kind == "U" or dtype[name].hasobject
                           for name in dtype.names):
        raise Unsupported("Unicode fields in a structured type")
    if dtype.hasobject:
        raise Unsupported("object type")
    return dtype


def h5_filter(cparams: Any) -> hdf5plugin.Blosc2:
    """The HDF5 Blosc2 filter closest to an NDArray's compression parameters."""
    filters = list(cparams.filters)
    shuffle = (hdf5plugin.Blosc2.BITSHUFFLE if blosc2.Filter.BITSHUFFLE in filters
               else hdf5plugin.Blosc2.SHUFFLE if blosc2.Filter.SHUFFLE in filters
               else hdf5plugin.Blosc2.NOFILTER)
    return hdf5plugin.Blosc2(cname=PORTABLE_CODECS.get(cparams.codec, "zstd"),
                             clevel=int(cparams.clevel), filters=shuffle)


def h5_chunking(array: blosc2.NDArray) -> dict[str, Any]:
    """``create_dataset`` arguments for the chunk shape of ``array`` (None if unchunked).

    HDF5 accepts a chunk dimension larger than the dataset's only where the dataset may
    grow, so those dimensions are made unlimited.
    """
    if not array.ndim or 0 in array.chunks:
        return {}
    maxshape = tuple(None if c > s else s for s, c in zip(array.shape, array.chunks))
    return {"chunks": tuple(array.chunks),
            "maxshape": maxshape if None in maxshape else None}


class ChunkExporter:
    """Writes the chunks of an NDArray into an HDF5 dataset of the same chunk shape.

    When the dataset uses the Blosc2 filter and the array's codec and filters are ones every
    build of that filter decodes, each chunk is wrapped, as stored, in the small frame the
    filter expects (no recompression); otherwise it is decompressed and written by h5py.
    """

    def __init__(self, array: blosc2.NDArray, dset: h5py.Dataset):
        self.array, self.dset = array, dset
        cparams = array.schunk.cparams
        plist = dset.id.get_create_plist()
        self.passthrough = (
            dset.dtype == array.dtype and dset.chunks == tuple(array.chunks)
            and plist.get_nfilters() == 1 and plist.get_filter(0)[0] == BLOSC2_FILTER_ID
            and cparams.codec in PORTABLE_CODECS
            and all(f in PORTABLE_FILTERS for f in cparams.filters))
        if self.passthrough:
            self.frame = blosc2.uninit(array.chunks, array.dtype, chunks=array.chunks,
                                       blocks=array.blocks, cparams=cparams)

    def write(self, nchunk: int) -> None:
        """Write chunk ``nchunk`` (a chunk never written in the array is left unallocated)."""
        schunk = self.array.schunk
        if is_uninit_chunk(schunk.get_lazychunk(nchunk)):
            return
        region = chunk_slices(nchunk, self.array.shape, self.array.chunks)
        if self.passthrough:
            self.frame.schunk.update_chunk(0, schunk.get_chunk(nchunk))
            self.dset.id.write_direct_chunk(tuple(r.start for r in region),
                                            self.frame.to_cframe())
            return
        data = self.array[region]
        if data.dtype.kind == "U":  # the dtype keeps h5py's UTF-8 mark
            data = np.char.encode(data, "utf-8").astype(self.dset.dtype)
        self.dset[region] = data
