"""The page of one dataset: ``/roots/{root}/{path}`` (a link one can share).

Its tabs (``?tab=``):

- ``view`` (the default): a line plot of 1-D data, an image of 2-D data in a colormap and,
  for N-D data, sliders choosing the plane shown along every other axis (``y``, ``x``:
  the plane's axes; ``i0``, ``i1``...: the index along the others; ``cmap``); text files
  as text, Markdown rendered (raw HTML in it is shown as text, never run);
- ``data``: a table of any selection (``slice_``, as in the REST API), by field for
  structured arrays;
- ``meta``: every metadata item and the user attributes.

Every tab shows the main metadata, how much of the dataset this subscriber has cached,
and a Download button.  Fragments for htmx: ``GET /web/plane/{root}/{path}`` (the image
of the plane chosen, as the sliders move).  ``GET /web/download/{root}/{path}``: an
ordinary file as it was published (other datasets download from ``/files``).
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import blosc2
import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from markdown_it import MarkdownIt

from caterva2 import paths, slicing
from caterva2.metadata import dtype_from_descr
from caterva2.models import AnyMeta, ArrayMeta, FileMeta, user_info
from caterva2.services.subscriber.deps import Sub
from caterva2.services.subscriber.node import Subscriber
from caterva2.services.subscriber.reads import Found, complete_file, lookup
from caterva2.services.subscriber.web import pictures, reading, tables
from caterva2.services.subscriber.web.templating import WebRoute, human_size, render

router = APIRouter(include_in_schema=False, route_class=WebRoute)
TEXT_PREVIEW = 256 << 10  # bytes of a text file shown, at most
DOWNLOAD_BATCH = 8  # chunks decompressed per step of a download
UNAVAILABLE = (503, 504)  # data that cannot be had now (its publisher is away...)
# CommonMark without raw HTML: any HTML in a file is shown as text, never run
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def page_url(root: str, path: str) -> str:
    return f"/roots/{urllib.parse.quote(root)}/{urllib.parse.quote(path)}"


@router.get("/roots/{root}/{path:path}")
async def dataset_page(request: Request, root: str, path: str, sub: Sub, tab: str = "view",
                       slice_: str | None = None) -> Response:
    found = await lookup(sub, root, path)
    meta = found.meta
    tabs = ["view", "data", "meta"] if isinstance(meta, ArrayMeta) else ["view", "meta"]
    if tab not in tabs:
        raise HTTPException(400, f"no tab {tab[:40]!r} for this dataset; its tabs are "
                                 f"{', '.join(tabs)}")
    context: dict[str, Any] = {}
    status = 200
    try:
        if tab == "view":
            context = await (array_view(request, sub, found) if isinstance(meta, ArrayMeta)
                             else text_view(sub, found))
        elif tab == "data":
            context = await data_view(sub, found, slice_)
    except HTTPException as e:
        if e.status_code not in UNAVAILABLE:
            raise
        # (the data cannot be had now: the page still shows what is known of it)
        status, context = e.status_code, {"unavailable": e.detail}
    return render(request, "dataset.html", status_code=status, root=root, path=path,
                  tab=tab, tabs=tabs,
                  url=page_url(root, path), facts=facts(meta),
                  held=await reading.holding(sub, found), download=download_url(root, path),
                  vlmeta={k: json.dumps(v) for k, v in meta.schunk.vlmeta.items()},
                  info=pretty_json(user_info(meta)), **context)


def pretty_json(value: Any, indent: str = "") -> str:
    """JSON indented for reading, with lists of plain values kept on one line."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {pretty_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + pretty_json(v, inner) for v in value) + \
            f"\n{indent}]"
    return json.dumps(value)


def download_url(root: str, path: str) -> str:
    """Where the Download button leads: the file as published for ordinary files, the
    Blosc2 file otherwise (as ``cat2cli download`` saves it)."""
    quoted = f"{urllib.parse.quote(root)}/{urllib.parse.quote(path)}"
    if paths.dataset_kind(path) == "file":
        return f"/web/download/{quoted}"
    return f"/files/{quoted}"


def facts(meta: AnyMeta) -> list[tuple[str, str]]:
    """The main metadata, as the page lists it."""
    sc = meta.schunk
    rows: list[tuple[str, str]] = []
    if isinstance(meta, ArrayMeta):
        rows += [("kind", "NDArray"),
                 ("shape", " × ".join(map(str, meta.shape)) or "() (a scalar)"),
                 ("dtype", meta.dtype), ("chunks", " × ".join(map(str, meta.chunks)) or "()"),
                 ("blocks", " × ".join(map(str, meta.blocks)) or "()")]
    elif isinstance(meta, FileMeta):
        when = datetime.datetime.fromtimestamp(meta.mtime, datetime.timezone.utc)
        rows += [("kind", "ordinary file"),
                 ("modified", when.strftime("%Y-%m-%d %H:%M:%S UTC"))]
    else:
        rows += [("kind", "SChunk (bytes)")]
    codec = _name(blosc2.Codec, sc.cparams.get("codec"))
    filters = [_name(blosc2.Filter, f) for f in sc.cparams.get("filters", []) if f]
    rows += [("size", human_size(sc.nbytes)), ("compressed", human_size(sc.cbytes)),
             ("cratio", f"{sc.cratio:.2f}×"),
             ("codec", f"{codec}, level {sc.cparams.get('clevel')}"),
             ("filters", ", ".join(filters) or "none"), ("stored chunks", str(sc.nchunks))]
    return rows


def _name(enum: Any, value: Any) -> str:
    try:
        return str(enum(value).name)
    except (ValueError, TypeError):
        return str(value)


async def array_view(request: Request, sub: Subscriber, found: Found) -> dict[str, Any]:
    """What the view tab shows of an array: a value, a line plot or a plane."""
    meta = found.meta
    assert isinstance(meta, ArrayMeta)
    shape = tuple(meta.shape)
    dtype = dtype_from_descr(meta.dtype_descr)
    if not shape:
        value = await reading.read_array(sub, found, ())
        return {"scalar": tables.format_value(value[()])}
    if 0 in shape:
        return {"no_picture": "This dataset is empty."}
    if len(shape) == 1:
        return await line_view(request, sub, found, dtype)
    if dtype.kind not in "biufc":
        return {"no_picture": f"{dtype} data has no numbers to draw: see the Data tab"}
    plane = choose_plane(shape, request)
    return {"plane": plane, "shape": shape, "colormaps": pictures.COLORMAPS,
            "picture": await plane_picture(sub, found, plane),
            "plane_url": f"/web/plane/{urllib.parse.quote(found.root)}/"
                         f"{urllib.parse.quote(found.path)}"}


async def line_view(request: Request, sub: Subscriber, found: Found,
                    dtype: np.dtype) -> dict[str, Any]:
    fields = [f for f in dtype.names or () if dtype[f].kind in "biufc"]
    field = request.query_params.get("field", fields[0] if fields else None)
    if dtype.names and field not in fields:
        if field is None:
            return {"no_picture": "no numeric field to draw: see the Data tab"}
        raise HTTPException(400, f"no numeric field {field[:40]!r} to draw; the fields "
                                 f"are {', '.join(fields)}")
    if not dtype.names and dtype.kind not in "biufc":
        return {"no_picture": f"{dtype} data has no numbers to draw: see the Data tab"}
    n = found.meta.shape[0]  # type: ignore[union-attr]  # (an array: checked above)
    step = pictures.plot_step(n)
    data = await reading.read_array(sub, found, (slice(None, None, step),))
    if field is not None:
        data = data[field]
    return {"plot": pictures.line_plot(data, step) if n else None, "fields": fields,
            "field": field}


def choose_plane(shape: tuple[int, ...], request: Request) -> pictures.Plane:
    try:
        return pictures.Plane.choose(shape, request.query_params)
    except pictures.BadChoice as e:
        raise HTTPException(400, str(e)) from None


async def plane_picture(sub: Subscriber, found: Found, plane: pictures.Plane
                        ) -> dict[str, Any]:
    """The image of a plane, ready for the template (a PNG as a data URL)."""
    shape = tuple(found.meta.shape)  # type: ignore[union-attr]  # (an array)
    data = plane.oriented(await reading.read_array(sub, found, plane.key(shape)))
    picture = await asyncio.to_thread(pictures.picture, data, plane.colormap)
    sy, sx = plane.steps(shape)
    return {"src": "data:image/png;base64," + base64.b64encode(picture.png).decode(),
            "ticks": picture.ticks(), "what": picture.what, "rows": picture.shape[0],
            "range": f"{pictures.label(picture.vmin)} to {pictures.label(picture.vmax)}",
            "columns": picture.shape[1], "steps": (sy, sx),
            "gradient": pictures.gradient(plane.colormap)}


@router.get("/web/plane/{root}/{path:path}")
async def plane_fragment(request: Request, root: str, path: str, sub: Sub) -> Response:
    """The image of the plane the viewer's controls choose (a fragment); the page's
    address follows, so that it can be shared."""
    found = await lookup(sub, root, path)
    if not isinstance(found.meta, ArrayMeta):
        raise HTTPException(400, f"{root}/{path} is not an array: it has no planes")
    plane = choose_plane(tuple(found.meta.shape), request)
    picture = await plane_picture(sub, found, plane)
    query = urllib.parse.urlencode({"tab": "view", **plane.query()})
    return render(request, "_plane.html", picture=picture, plane=plane,
                  headers={"HX-Replace-Url": f"{page_url(root, path)}?{query}"})


async def data_view(sub: Subscriber, found: Found, slice_: str | None) -> dict[str, Any]:
    """The Data tab: a table of the selection ``slice_`` (a default one if None)."""
    meta = found.meta
    assert isinstance(meta, ArrayMeta)
    shape = tuple(meta.shape)
    text = tables.default_slice(shape) if slice_ is None else slice_
    if len(text) > 1000:
        raise HTTPException(400, "a selection is at most 1000 characters long")
    key = slicing.parse_slice(text)
    dtype = dtype_from_descr(meta.dtype_descr)
    try:
        tables.check_size(key, shape, len(dtype.names or ()))
    except tables.BadTable as e:
        raise HTTPException(400, str(e)) from None
    data = await reading.read_array(sub, found, key)
    return {"slice_": text, "table": tables.table(data, tables.indices(key, shape))}


async def text_view(sub: Subscriber, found: Found) -> dict[str, Any]:
    """The view tab of bytes: text (Markdown rendered), or a note that they are binary."""
    nbytes = found.meta.schunk.nbytes
    data = await reading.read_bytes(sub, found, 0, TEXT_PREVIEW)
    context: dict[str, Any] = {"truncated": nbytes > len(data), "shown": len(data)}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(data) - 3:  # (not merely a character cut at the preview's end)
            return context | {"binary": data[:512].hex(" ", 1)}
        text = data[:e.start].decode("utf-8")
    if found.path.lower().endswith((".md", ".markdown")):
        return context | {"markdown": _markdown.render(text)}
    return context | {"text": text}


@router.get("/web/download/{root}/{path:path}")
async def download_original(root: str, path: str, sub: Sub) -> Response:
    """An ordinary file as published (decompressed chunk by chunk as it is sent)."""
    if paths.dataset_kind(path) != "file":
        raise HTTPException(400, f"{root}/{path} is a Blosc2 dataset: download it from "
                                 f"/files/{root}/{path}")
    found, _ = await complete_file(sub, root, path, verify=True)
    replica = sub.cache.replica(found.root, found.path, found.entry)  # (leased to us)
    sc = found.meta.schunk
    name = path.rsplit("/", 1)[-1]

    async def body() -> AsyncIterator[bytes]:
        step = sc.chunkshape * DOWNLOAD_BATCH
        for start in range(0, sc.nbytes // sc.typesize, step):
            yield await asyncio.to_thread(replica.read_items, start, start + step)

    size = found.meta.size if isinstance(found.meta, FileMeta) else sc.nbytes
    return StreamingResponse(body(), media_type="application/octet-stream", headers={
        "content-length": str(size),
        "content-disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}"})
