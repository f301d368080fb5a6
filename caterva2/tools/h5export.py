"""``cat2export ROOTDIR FILE.h5``: turn a Caterva2 root directory into an HDF5 file."""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Callable

import blosc2
import numpy as np

from caterva2.progress import Counter, Progress

try:
    import h5py

    from caterva2.h5convert import (
        FILE_CHUNKSIZE,
        GROUP_ATTRS,
        KIND_ATTR,
        NULL_KIND,
        ChunkExporter,
        ConversionError,
        Report,
        Unsupported,
        Warn,
        h5_chunking,
        h5_dtype,
        h5_filter,
        partial_path,
        write_attrs,
    )
    from caterva2.tools.conversion import run_conversion
except ImportError as e:  # reported by main(), in one line
    MISSING: ImportError | None = e
else:
    MISSING = None

DESCRIPTION = """\
Convert the Caterva2 root directory ROOTDIR into a new HDF5 file FILE.h5 (the reverse
of cat2import).

  - Directories become groups; the user attributes of a directory's __attrs__.b2frame
    become the group's attributes.
  - Each Blosc2 array NAME.b2nd becomes the dataset NAME with the same shape, dtype and
    chunk shape, compressed with the Blosc2 HDF5 filter (read it with h5py after
    `import hdf5plugin`).  Chunks are copied as stored, without recompressing, when
    their codec and filters are ones the HDF5 filter decodes; otherwise they are
    recompressed.  Unicode text arrays become fixed-size UTF-8 strings.  User
    attributes (vlmeta) become HDF5 attributes.
  - .b2frame SChunks and ordinary files become 1-D uint8 datasets (their decompressed
    bytes) with the attribute caterva2_kind="b2frame" or "file", which cat2import
    turns back into what they were.
  - Hidden files and directories (names starting with ".") are left out.  What cannot
    be converted is skipped with one warning line each and listed at the end.

The conversion works chunk by chunk, so memory stays bounded by a few chunks.  FILE.h5 is
written under a hidden name and renamed when complete: it never exists half-written.
FILE.h5 must not exist already."""

BYTES_CPARAMS = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=5, typesize=1,
                               filters=[blosc2.Filter.SHUFFLE])


def export_root(source: str | os.PathLike, target: str | os.PathLike,
                warn: Warn = print, progress: Progress | None = None) -> Report:
    """Convert root directory ``source`` into a new HDF5 file ``target``.

    ``progress(done, total)`` is told how far it got, in bytes of the root's files
    (as stored, compressed), out of all of them (see :mod:`caterva2.progress`).
    """
    source, target = pathlib.Path(source), pathlib.Path(target)
    if not source.is_dir():
        problem = "not a directory" if source.exists() else "no such directory"
        raise ConversionError(f"{source}: {problem}")
    tmp = partial_path(target)
    report = Report()

    def skip(message: str) -> None:
        report.skip(message, warn)

    counter = Counter(progress, sum(size for _, size in _root_files(source))
                      if progress else None)
    try:
        with h5py.File(tmp, "w") as h5:
            for dirpath, dirnames, filenames in os.walk(source):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = pathlib.Path(dirpath).relative_to(source).as_posix()
                group = h5 if rel == "." else h5.require_group(rel)
                for name in sorted(f for f in filenames if not f.startswith(".")):
                    before = set(group)
                    path = name if rel == "." else f"{rel}/{name}"
                    file, start = pathlib.Path(dirpath, name), counter.done
                    try:
                        _export_one(file, path, group, skip, report,
                                    _per_chunk(counter, _size(file)))
                    except (Unsupported, RuntimeError, ValueError) as e:
                        # Blosc2 raises RuntimeError/ValueError on a damaged file.
                        for dataset_name in (name, name.removesuffix(".b2nd")):
                            if dataset_name in group and dataset_name not in before:
                                del group[dataset_name]
                        skip(f"{path}: {e}, skipped")
                    counter.add(start + _size(file) - counter.done)  # (exact per file)
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return report


def _root_files(source: pathlib.Path):
    """(path, size) of every file export_root converts (hidden ones left out, as there)."""
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                file = pathlib.Path(dirpath, name)
                yield file, _size(file)


def _size(file: pathlib.Path) -> int:
    try:
        return file.stat().st_size
    except OSError:  # (gone meanwhile: reported when converted)
        return 0


def _per_chunk(counter: Counter, size: int) -> Callable[[int], None]:
    """``tick(nchunks)``: one chunk of ``nchunks`` done, as an even share of ``size``."""
    def tick(nchunks: int) -> None:
        counter.add(size // max(nchunks, 1))
    return tick


def _open_blosc2(file: pathlib.Path, path: str):
    try:
        return blosc2.open(str(file), mode="r")
    except Exception as e:  # noqa: BLE001 - blosc2 raises several kinds on bad files
        raise Unsupported(f"not readable as Blosc2 ({e})") from None


def _export_one(file: pathlib.Path, path: str, group, skip: Warn, report: Report,
                tick: Callable[[int], None]) -> None:
    name = file.name
    if name == GROUP_ATTRS:
        obj = _open_blosc2(file, path)
        schunk = obj.schunk if isinstance(obj, blosc2.NDArray) else obj
        write_attrs(group, dict(schunk.vlmeta.getall()), group.name, skip)
        return
    if name.endswith(".b2nd"):
        array = _open_blosc2(file, path)
        if not isinstance(array, blosc2.NDArray):
            raise Unsupported("not a Blosc2 NDArray")
        name = name[:-len(".b2nd")]
    if name in group:
        raise Unsupported(f"dataset name {name!r} clashes with another file")
    if file.name.endswith(".b2nd"):
        dset = _export_array(array, name, group, tick)
        vlmeta = dict(array.schunk.vlmeta.getall())
        if vlmeta.get(KIND_ATTR) == NULL_KIND:
            del vlmeta[KIND_ATTR]  # said by the dataset itself: no dataspace
        nbytes = array.schunk.nbytes
    elif name.endswith(".b2frame"):
        obj = _open_blosc2(file, path)
        schunk = obj.schunk if isinstance(obj, blosc2.NDArray) else obj
        dset = _export_bytes(name, group, schunk.nbytes, schunk.chunksize,
                             (schunk.decompress_chunk(n) for n in range(schunk.nchunks)))
        vlmeta = {**schunk.vlmeta.getall(), KIND_ATTR: "b2frame"}
        nbytes = schunk.nbytes
    else:
        nbytes = file.stat().st_size
        with open(file, "rb") as f:
            dset = _export_bytes(name, group, nbytes, FILE_CHUNKSIZE,
                                 iter(lambda: f.read(FILE_CHUNKSIZE), b""))
        vlmeta = {KIND_ATTR: "file"}
    write_attrs(dset, vlmeta, path, skip)
    report.datasets += 1
    report.nbytes += nbytes


def _export_array(array: blosc2.NDArray, name: str, group, tick: Callable[[int], None]):
    dtype = h5_dtype(array.dtype)
    kind = array.schunk.vlmeta.get(KIND_ATTR) if KIND_ATTR in array.schunk.vlmeta else None
    if array.ndim == 0:
        value = array[()]
        if dtype != array.dtype:
            value = np.char.encode(value, "utf-8").astype(dtype)
        return group.create_dataset(name, data=value, dtype=dtype)
    if array.size == 0:
        if kind == NULL_KIND:
            return group.create_dataset(name, data=h5py.Empty(dtype))
        return group.create_dataset(name, shape=array.shape, dtype=dtype,
                                    **h5_chunking(array))
    dset = group.create_dataset(name, shape=array.shape, dtype=dtype, **h5_chunking(array),
                                **h5_filter(array.schunk.cparams))
    exporter = ChunkExporter(array, dset)
    for n in range(array.schunk.nchunks):
        exporter.write(n)
        tick(array.schunk.nchunks)
    return dset


def _export_bytes(name: str, group, nbytes: int, chunksize: int, pieces):
    """A 1-D uint8 dataset holding ``pieces`` of bytes (chunk shape ``chunksize``)."""
    if not nbytes:
        return group.create_dataset(name, shape=(0,), dtype=np.uint8)
    dset = group.create_dataset(name, shape=(nbytes,), dtype=np.uint8,
                                chunks=(min(chunksize, nbytes),),
                                **h5_filter(BYTES_CPARAMS))
    pos = 0
    for piece in pieces:
        piece = piece[:nbytes - pos]
        dset[pos:pos + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        pos += len(piece)
    return dset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cat2export", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="ROOTDIR", help="root directory to convert")
    parser.add_argument("target", metavar="FILE.h5", help="HDF5 file to create")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no warnings while converting (the summary still lists "
                             "what was skipped)")
    args = parser.parse_args(argv)
    if MISSING is not None:
        sys.exit(f"cat2export: error: {MISSING}; install with: pip install 'caterva2[hdf5]'")

    def convert(warn: Warn, progress: Progress | None) -> Report:
        return export_root(args.source, args.target, warn, progress)

    run_conversion("cat2export", "Exported", f"Exporting {args.source}", convert,
                   args.target, args.quiet)


if __name__ == "__main__":
    main()
