"""Benchmark: cat2import throughput against the floor of just reading the file with h5py.

    python bench/hdf5_import.py [--size-mb 300] [--dir DIR] [--repeat 3] [--keep]
                                [--codec zstd] [--clevel 1]

Makes one 3-D uint16 image stack of about SIZE MB (synthetic images: smooth background
plus noise, chunks of 4 frames) in three HDF5 variants: uncompressed, gzip (level 4 with
shuffle) and Blosc2-filtered (hdf5plugin, chunks pass through without recompressing).
For each, it times

- the floor: reading every chunk with h5py (``dset[chunk region]``), data discarded;
- cat2import's conversion (``caterva2.tools.h5import.import_hdf5``) into a fresh root.

Both run with the file in the page cache (it is read once before timing), so the figures
compare CPU work, not the disk.  Throughput is MB of (uncompressed) HDF5 data per second;
the best of ``--repeat`` runs is shown.
"""
from __future__ import annotations

import argparse
import itertools
import pathlib
import shutil
import tempfile
import time

import blosc2
import h5py
import hdf5plugin
import numpy as np

from caterva2.tools.h5import import CODECS, import_hdf5

FRAME = (512, 512)
CHUNK_FRAMES = 4
VARIANTS = {
    "uncompressed": {},
    "gzip": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
    "blosc2": dict(hdf5plugin.Blosc2(cname="zstd", clevel=1,
                                     filters=hdf5plugin.Blosc2.SHUFFLE)),
}


def frames(n: int, seed: int = 0):
    """Synthetic detector images: a smooth background plus Poisson noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:FRAME[0], 0:FRAME[1]]
    background = 200 + 100 * np.sin(x / 40.0) * np.cos(y / 55.0)
    for i in range(0, n, CHUNK_FRAMES):
        count = min(CHUNK_FRAMES, n - i)
        yield i, rng.poisson(background, size=(count, *FRAME)).astype("u2")


def make_file(path: pathlib.Path, nframes: int, options: dict) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        dset = f.create_dataset("stack", shape=(nframes, *FRAME), dtype="u2",
                                chunks=(CHUNK_FRAMES, *FRAME), **options)
        for i, block in frames(nframes):
            dset[i:i + len(block)] = block
    tmp.rename(path)


def read_all_chunks(path: pathlib.Path) -> int:
    """The floor: read every chunk with h5py; returns bytes of data read."""
    nbytes = 0
    with h5py.File(path, "r") as f:
        dset = f["stack"]
        grid = [range(0, s, c) for s, c in zip(dset.shape, dset.chunks)]
        for start in itertools.product(*grid):
            region = tuple(slice(a, a + c) for a, c in zip(start, dset.chunks))
            nbytes += dset[region].nbytes
    return nbytes


def best_time(func, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=300,
                        help="uncompressed size of the image stack in MB (default: 300)")
    parser.add_argument("--dir", type=pathlib.Path, default=None,
                        help="where to put the files (default: a temporary directory)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--codec", choices=sorted(CODECS), default="zstd",
                        help="cat2import --codec (for chunks it compresses; default: zstd)")
    parser.add_argument("--clevel", type=int, default=1, help="cat2import --clevel")
    args = parser.parse_args()
    cparams = {"codec": CODECS[args.codec], "clevel": args.clevel,
               "filters": [blosc2.Filter.SHUFFLE]}
    nframes = max(CHUNK_FRAMES, int(args.size_mb * 1e6 / (2 * FRAME[0] * FRAME[1])))
    workdir = args.dir or pathlib.Path(tempfile.mkdtemp(prefix="cat2-h5bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name, options in VARIANTS.items():
            path = workdir / f"stack-{nframes}-{name}.h5"
            make_file(path, nframes, options)
            nbytes = read_all_chunks(path)  # also warms the page cache
            floor = best_time(lambda path=path: read_all_chunks(path), args.repeat)
            out = workdir / f"out-{name}"

            def convert(path=path, out=out) -> None:
                shutil.rmtree(out, ignore_errors=True)
                import_hdf5(path, out, warn=print, cparams=cparams)

            convert_s = best_time(convert, args.repeat)
            out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            shutil.rmtree(out, ignore_errors=True)
            rows.append((name, nbytes / 1e6, path.stat().st_size / 1e6, out_bytes / 1e6,
                         nbytes / 1e6 / floor, nbytes / 1e6 / convert_s))
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{nframes} frames of {FRAME[0]}x{FRAME[1]} uint16, chunks of {CHUNK_FRAMES} "
          f"frames; cat2import --codec {args.codec} --clevel {args.clevel}; "
          f"best of {args.repeat}; file in page cache\n")
    header = ("HDF5 file", "data MB", "file MB", "root MB", "h5py read MB/s",
              "cat2import MB/s", "import/read")
    print("{:<14}{:>9}{:>9}{:>9}{:>16}{:>17}{:>13}".format(*header))
    for name, data_mb, file_mb, out_mb, floor_rate, import_rate in rows:
        print(f"{name:<14}{data_mb:>9.0f}{file_mb:>9.0f}{out_mb:>9.0f}{floor_rate:>16.0f}"
              f"{import_rate:>17.0f}{import_rate / floor_rate:>13.2f}")


if __name__ == "__main__":
    main()
