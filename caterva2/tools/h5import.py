"""``cat2import FILE.h5 ROOTDIR``: turn an HDF5 file into a Caterva2 root directory."""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import shutil
import sys
from collections.abc import Callable
from typing import Any

import blosc2
import numpy as np

from caterva2.progress import Counter, Progress

try:
    import h5py

    from caterva2.h5convert import (
        GROUP_ATTRS,
        KIND_ATTR,
        NULL_KIND,
        Report,
        Unsupported,
        Warn,
        check_hdf5,
        copy_chunks,
        dataset_layout,
        dataset_nbytes,
        file_nbytes,
        new_array,
        partial_path,
        read_attrs,
        walk,
    )
    from caterva2.tools.conversion import run_conversion
except ImportError as e:  # reported by main(), in one line
    MISSING: ImportError | None = e
else:
    MISSING = None

DESCRIPTION = """\
Convert the HDF5 file FILE.h5 into a new Caterva2 root directory ROOTDIR, which
cat2pub can then publish.

  - Groups become directories.  Group attributes are kept as the user attributes
    (vlmeta) of an empty SChunk named __attrs__.b2frame in that directory.
  - Each dataset NAME becomes the Blosc2 array NAME.b2nd with the same shape, dtype and
    chunk shape (a contiguous dataset gets a chunk shape chosen by Blosc2).  Its
    attributes become user attributes: numbers, strings, arrays (as lists), compound
    values (as dicts) and empty values (as None).
  - Chunks stored with the Blosc2 HDF5 filter (hdf5plugin.Blosc2) are copied as they
    are, without recompressing; other chunks are decompressed by HDF5 and compressed
    with --codec/--clevel.
  - Scalar and empty datasets, fixed-length strings, compound types and all numeric types
    are converted.  Variable-length strings (h5py's default for str) become fixed-size
    strings as long as the longest one: Unicode for UTF-8 text, bytes for ASCII.  A
    dataset with no dataspace (h5py.Empty) becomes an empty 1-D array with the user
    attribute caterva2_kind="hdf5-null".  1-D uint8 datasets written by cat2export with
    caterva2_kind="b2frame" or "file" become .b2frame SChunks and ordinary files again.
  - A soft link to a dataset becomes a copy of that dataset at the link's path.
  - What cannot be converted is skipped with one warning line each and listed at the
    end: object and region references, other variable-length types (sequences), HDF5
    array types, opaque types, external links, soft links to groups (the group is
    converted at its own path) and dangling ones, named datatypes, unreadable datasets.

The conversion works chunk by chunk, so memory stays bounded by a few chunks whatever the
file size.  ROOTDIR is written under a hidden name and renamed when complete: it never
exists half-written.  ROOTDIR must not exist already."""

CODECS = {"zstd": blosc2.Codec.ZSTD, "lz4": blosc2.Codec.LZ4, "lz4hc": blosc2.Codec.LZ4HC,
          "blosclz": blosc2.Codec.BLOSCLZ, "zlib": blosc2.Codec.ZLIB}


def import_hdf5(source: str | os.PathLike, target: str | os.PathLike, warn: Warn = print,
                cparams: dict[str, Any] | None = None,
                progress: Progress | None = None) -> Report:
    """Convert HDF5 file ``source`` into a new root directory ``target``.

    Objects that cannot be converted are reported through ``warn`` (one line each) and
    listed in the returned report.  Raises ConversionError for bad input.
    ``progress(done, total)`` is told the bytes of data converted so far, out of all the
    file's (see :mod:`caterva2.progress`).
    """
    source, target = pathlib.Path(source), pathlib.Path(target)
    check_hdf5(source)
    tmp = partial_path(target)
    report = Report()

    def skip(message: str) -> None:
        report.skip(message, warn)

    try:
        tmp.mkdir()
        with h5py.File(source, "r", locking=False) as h5:
            counter = Counter(progress, file_nbytes(h5) if progress else None)
            _write_group_attrs(h5, tmp, "", skip)
            for path, obj in walk(h5, skip):
                dest = tmp / path
                if isinstance(obj, h5py.Group):
                    if os.path.lexists(dest):
                        skip(f"{path}: name clashes with another converted object, skipped")
                        continue
                    dest.mkdir()
                    _write_group_attrs(obj, dest, path, skip)
                else:
                    start = counter.done
                    _import_dataset(obj, path, dest, cparams, skip, report, counter.add)
                    # (what was skipped counts as done too: the bar ends full)
                    counter.add(start + dataset_nbytes(obj) - counter.done)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _write_group_attrs(group, dest: pathlib.Path, where: str, warn: Warn) -> None:
    attrs = read_attrs(group, where, warn)
    if attrs:
        schunk = blosc2.SChunk(urlpath=str(dest / GROUP_ATTRS), mode="w", contiguous=True)
        for key, value in attrs.items():
            schunk.vlmeta[key] = value


def _import_dataset(dset, path: str, dest: pathlib.Path, cparams: dict[str, Any] | None,
                    skip: Warn, report: Report, done: Callable[[int], None]) -> None:
    try:
        layout = dataset_layout(dset, cparams)
    except Unsupported as e:
        skip(f"{path}: {e}, skipped")
        return
    attrs = read_attrs(dset, path, skip)
    kind = attrs.pop(KIND_ATTR, None)
    is_bytes = (kind in ("b2frame", "file") and len(layout.shape) == 1
                and layout.dtype == np.uint8 and not layout.null)
    if is_bytes:
        if kind == "b2frame" and not dest.name.endswith(".b2frame"):
            dest = dest.with_name(dest.name + ".b2frame")
    else:
        dest = dest.with_name(dest.name + ".b2nd")
        if layout.null:
            attrs[KIND_ATTR] = NULL_KIND
        elif kind is not None:
            attrs[KIND_ATTR] = kind
    if os.path.lexists(dest):
        skip(f"{path}: name clashes with another converted object, skipped")
        return
    try:
        if is_bytes:
            _import_bytes(dset, dest, kind, attrs, done)
        else:
            out = new_array(layout, str(dest), attrs)
            copy_chunks(dset, layout, out, done)
            del out
    except OSError as e:
        if e.errno is not None:
            raise  # a local problem (disk full...), not the dataset's: stop
        dest.unlink(missing_ok=True)
        skip(f"{path}: unreadable ({e}), skipped")
        return
    report.datasets += 1
    report.nbytes += math.prod(layout.shape) * layout.dtype.itemsize


def _import_bytes(dset, dest: pathlib.Path, kind: str, attrs: dict[str, Any],
                  done: Callable[[int], None]) -> None:
    """A 1-D uint8 dataset written by cat2export back into a SChunk or an ordinary file."""
    size = dset.shape[0]
    step = dset.chunks[0] if dset.chunks else 1 << 20

    def read(start: int) -> bytes:
        piece = dset[start:start + step].tobytes()
        done(len(piece))
        return piece

    pieces = (read(i) for i in range(0, size, step))
    if kind == "file":
        with open(dest, "wb") as f:
            f.writelines(pieces)
        return
    schunk = blosc2.SChunk(chunksize=step, urlpath=str(dest), mode="w", contiguous=True,
                           cparams={"typesize": 1, "codec": blosc2.Codec.ZSTD, "clevel": 5})
    for piece in pieces:
        schunk.append_data(piece)
    for key, value in attrs.items():
        schunk.vlmeta[key] = value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cat2import", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="FILE.h5", help="HDF5 file to convert")
    parser.add_argument("target", metavar="ROOTDIR", help="root directory to create")
    parser.add_argument("--codec", choices=sorted(CODECS), default="zstd",
                        help="codec for chunks that must be compressed (default: zstd)")
    parser.add_argument("--clevel", type=int, choices=range(10), default=1, metavar="0-9",
                        help="compression level for those chunks (default: 1)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no warnings while converting (the summary still lists "
                             "what was skipped)")
    args = parser.parse_args(argv)
    if MISSING is not None:
        sys.exit(f"cat2import: error: {MISSING}; install with: pip install 'caterva2[hdf5]'")
    cparams = {"codec": CODECS[args.codec], "clevel": args.clevel,
               "filters": [blosc2.Filter.SHUFFLE]}

    def convert(warn: Warn, progress: Progress | None) -> Report:
        return import_hdf5(args.source, args.target, warn, cparams, progress)

    run_conversion("cat2import", "Imported", f"Importing {args.source}", convert,
                   args.target, args.quiet)


if __name__ == "__main__":
    main()
