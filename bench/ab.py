"""A/B: the same large reads on two (or more) versions of the code, interleaved, in one run.

    .venv/bin/python bench/ab.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 4]

Each argument is a directory holding a ``caterva2`` package (a checkout or a copy of one).
A round starts a broker, a publisher and a subscriber of one version on free loopback
ports, and times cold and warm full reads of 128 MB arrays, a cold 4-chunk slice and cold
and warm downloads; versions take turns, in alternating order, so that whatever else the
machine does falls on all of them alike.  Prints the median (and minimum) of every figure,
with the subscriber's and publisher's peak memory.  Data goes to a temporary directory.

On a shared machine single runs of large reads vary by tenths of a second
(``bench/fresh_pages.py``): decide from the medians of this script, not from one run.

By default each round deletes the previous round's cache first, which leaves freshly freed
memory for its writes: the cheap case.  ``--keep`` keeps every round's files until the
end, so that each round's cache needs memory the machine has not just freed, as in a
long-running subscriber (on this machine's VMs, several times dearer to write).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for scaling.py, the benchmark's data maker and helpers
NFILES = 5
SHAPE = (4000, 4000)  # float64: 128 MB, 64 chunks of 500x500


def make_data(directory: pathlib.Path) -> None:
    import scaling  # imported late: see one_round

    for i in range(1, NFILES + 1):
        scaling.make_array(directory / f"f{i}.b2nd", SHAPE, seed=i)


def one_round(code: str, work: pathlib.Path, data: pathlib.Path) -> dict[str, list[float]]:
    """Times of one stack of the code in ``code`` (run in a process of its own)."""
    import caterva2 as cat2  # from ``code`` (PYTHONPATH, see main)
    from caterva2.tests.harness import Stack, wait_until

    if not pathlib.Path(cat2.__file__).resolve().is_relative_to(code):
        raise RuntimeError(f"caterva2 came from {cat2.__file__}, not from {code}")
    # Only now: scaling puts this checkout first on sys.path, but caterva2 is loaded already.
    from scaling import timed

    stack = Stack(work)
    pub = stack.publisher("ab", data)
    sub = stack.subscriber()
    out: dict[str, list[float]] = {"cold_full": [], "warm_full": []}
    try:
        wait_until(lambda: "ab" in cat2.get_roots(sub.address), timeout=60,
                   what="the root at the subscriber")
        root = cat2.Root("ab", host=sub.address)
        for i in (1, 2, 3):
            ds = root[f"f{i}.b2nd"]
            out["cold_full"].append(timed(lambda ds=ds: ds[:])[0])
            out["warm_full"] += [timed(lambda ds=ds: ds[:])[0] for _ in range(3)]
        ds = root["f4.b2nd"]
        out["cold_slice4"] = [timed(lambda: ds[0:900, 1:900])[0]]
        ds = root["f5.b2nd"]
        os.chdir(work)
        out["cold_download"] = [timed(ds.download)[0]]
        out["warm_download"] = [timed(ds.download)[0] for _ in range(2)]
        out["sub_peak_mb"] = [sub.peak_memory_mb()]
        out["pub_peak_mb"] = [pub.peak_memory_mb()]
    finally:
        stack.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="directories holding a caterva2 package")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--keep", action="store_true",
                        help="keep every round's files until the end (see above)")
    parser.add_argument("--round", nargs=2, metavar=("WORK", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.round:  # one round, in a child process whose caterva2 comes from versions[0]
        print(json.dumps(one_round(args.versions[0], *map(pathlib.Path, args.round))))
        return
    versions = [str(pathlib.Path(v).resolve()) for v in args.versions]
    for v in versions:
        if not (pathlib.Path(v) / "caterva2" / "__init__.py").exists():
            parser.error(f"{v} holds no caterva2 package")
    results: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
    with tempfile.TemporaryDirectory(prefix="caterva2-ab-") as temp:
        data = pathlib.Path(temp) / "data"
        data.mkdir()
        make_data(data)
        for r in range(args.rounds):
            for v in versions if r % 2 == 0 else versions[::-1]:
                work = pathlib.Path(temp) / (f"work{r}-{versions.index(v)}" if args.keep
                                             else "work")
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                env = {**os.environ, "PYTHONPATH": v}  # the services import this version
                done = subprocess.run([sys.executable, __file__, v, "--round", str(work),
                                       str(data)], capture_output=True, text=True,
                                      env=env, cwd=v, timeout=600, check=False)
                if done.returncode != 0:
                    print(f"round {r} of {v} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                for name, values in json.loads(done.stdout.splitlines()[-1]).items():
                    results[v].setdefault(name, []).extend(values)
                print(f"round {r + 1}/{args.rounds}: {v} done", file=sys.stderr)
    names = list(next(iter(results.values())))
    print(f"{'figure':14}" + "".join(f" {pathlib.Path(v).name[-24:]:>28}" for v in versions))
    for name in names:
        cells = []
        for v in versions:
            values = results[v].get(name, [])
            cells.append(f"{statistics.median(values):.4g} (min {min(values):.4g}, n={len(values)})"
                         if values else "-")
        print(f"{name:14}" + "".join(f" {c:>28}" for c in cells))


if __name__ == "__main__":
    main()
