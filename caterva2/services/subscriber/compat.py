"""What other Caterva2 clients send a subscriber, and what they expect back.

Three generations of clients read from a subscriber, each unchanged, and the data
endpoints (:mod:`.data_api`) tell them apart by what they send:

- **ours** (:class:`caterva2.Client`, ``cat2cli``): arrays as this package's forms
  (``buffer=true``, ``chunks=true``, an NDArray cframe), bytes with ``buffer=true`` (one
  Blosc2 buffer), downloads as ``/api/download`` (a JSON URL) then ``/files``;
- **the released 0.2-era client** (``caterva2==0.2.*``: ``get_roots``, ``fetch``...,
  ``Root``/``Dataset``/``File``): sends ``prefer_schunk`` with every fetch; reads an
  array selection as an NDArray cframe and a bytes selection as one Blosc2 buffer
  (``blosc2.decompress2``); downloads as ours do;
- **the current upstream client** (``caterva2.Client(url)`` of the 2026 releases) and
  **Blosc2's remote arrays** (``blosc2.C2Array(path, urlbase=...)``): send neither; read
  a bytes selection as an SChunk cframe (``blosc2.schunk_from_cframe``), a chunk as stored
  at ``/api/chunk/{root}/{path}?nchunk=N``, and a download from ``/api/download/{path}``
  itself, asked with ``Accept-Encoding: blosc2``: the dataset's file, an ordinary file as
  its Blosc2 frame marked ``Content-Encoding: blosc2`` (the client unpacks it).

The upstream client may also ask for one field of a structured array (``field=NAME``),
answered as an NDArray cframe.  What none of them gets is a wrong answer: selections this
subscriber does not make (coordinates, filters) are refused with a 400 rather than
answered with the whole dataset, and byte ranges of an answer that is built, not stored,
with a 416.
"""
from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException

from caterva2 import wire
from caterva2.metadata import dtype_from_descr
from caterva2.models import AnyMeta, ArrayMeta

BLOSC2_CODING = "blosc2"  # the content coding of a Blosc2 frame holding a file's bytes
NO_RANGES = {"Accept-Ranges": "none"}


def bytes_encoder(buffer: bool, prefer_schunk: bool | None) -> Callable[[bytes, int], bytes]:
    """How to send a bytes selection (``encode(data, typesize)``): one Blosc2 buffer to
    clients that ask for it (ours: ``buffer=true``) or say ``prefer_schunk`` (0.2-era ones
    send it with every fetch, and decompress the answer as one buffer); else an SChunk
    cframe, as the released subscriber answers."""
    if buffer or prefer_schunk is not None:
        return lambda data, typesize: wire.encode_bytes(data)
    return wire.encode_bytes_frame


def accepts_blosc2(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header takes the ``blosc2`` coding (``q=0`` refuses
    it, as in RFC 9110)."""
    for coding in (accept_encoding or "").split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() == BLOSC2_CODING:
            q = params.strip().lower().removeprefix("q=").strip()
            try:
                return not q or float(q) > 0
            except ValueError:
                return True  # (a malformed weight: take the coding as asked for)
    return False


def refuse_ranges(range_header: str | None, dataset: str) -> None:
    """416 for a ``Range`` request of a built answer (Blosc2's remote arrays try one before
    reading blocks; refused, they read whole chunks, and nothing is built in vain)."""
    if range_header is not None and range_header.strip():
        raise HTTPException(416, f"{dataset}: selections are built for each request, so "
                                 "byte ranges of them are not served; read chunks "
                                 "(/api/chunk) or the whole file (/files)", headers=NO_RANGES)


def refuse_unsupported(dataset: str, indices: str | None, filter_: str | None) -> None:
    """400 for selections that newer clients may ask for and this subscriber does not make:
    answering them with the whole dataset would be a wrong answer."""
    if indices is not None:
        raise HTTPException(400, f"{dataset}: selections by coordinates (indices=) are not "
                                 "made here; select a box with slice_ and index the result "
                                 "with NumPy")
    if filter_ is not None:
        raise HTTPException(400, f"{dataset}: filters are not evaluated here; read a box "
                                 "with slice_ and filter the result")


def check_field(dataset: str, meta: AnyMeta, field: str, chunks: bool) -> None:
    """400 unless ``field`` names a field of the structured array ``meta`` describes (the
    upstream client's ``array["name"]`` asks for one), in an answer that can hold it (a
    chunk stream holds whole records)."""
    if not isinstance(meta, ArrayMeta):
        raise HTTPException(400, f"{dataset} is not an array: it has no fields")
    names = dtype_from_descr(meta.dtype_descr).names or ()
    if field not in names:
        raise HTTPException(400, f"{dataset} has no field {field!r}" + (
            f" (its fields: {', '.join(names)})" if names else ": it is not structured"))
    if chunks:
        raise HTTPException(400, "chunks=true sends whole records: leave field out")
