"""``cat2cli``: the command-line client, a thin layer over :mod:`caterva2.client`.

Examples::

    cat2cli roots
    cat2cli subscribe foo
    cat2cli list foo
    cat2cli info foo/dir2/ds-4d.b2nd
    cat2cli show 'foo/dir1/ds-2d.b2nd[1:3, ::5]'
    cat2cli download foo/dir2/ds-4d.b2nd
    cat2cli cache
    cat2cli unsubscribe foo

The subscriber is ``--host HOST:PORT``, else the environment variable
``CATERVA2_SUBSCRIBER``, else ``[subscriber] url`` or ``http`` from ``caterva2.toml`` (or
the ``--conf`` file), else ``localhost:8002``.  Every command takes ``--json``.

Errors are one line on stderr (``cat2cli: error: ...``) and a non-zero exit status.  Data
that the subscriber served from its cache without being able to check it with its source
(its broker and the dataset's publisher unreachable) is printed as usual, and one line on
stderr says so (``cat2cli: warning: ...``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import warnings
from collections.abc import Iterator

import httpx
import numpy as np

import caterva2 as cat2
from caterva2 import config, paths, progress, slicing
from caterva2.jsonable import jsonable

# A selection is a bracketed suffix; names may hold brackets too ("foo/b[1].txt[0:3]").
DATASET_WITH_SLICE = re.compile(r"^(?P<dataset>.+?)(?:\[(?P<slice>[^\[\]]*)\])?$")


def split_selection(text: str) -> tuple[str, str | None]:
    """``"foo/a.b2nd[1:3]"`` → ``("foo/a.b2nd", "1:3")``.

    A selection left open (``foo/a.b2nd[1:3``) or closed twice (``[1:3]]``) is a
    SelectionError: said as such rather than taken for part of the dataset's name, which
    would only give "no such dataset".
    """
    m = DATASET_WITH_SLICE.match(text.strip())
    if not m:
        raise ValueError(f"cannot read {text!r}: expected DATASET or DATASET[SLICE]")
    if m["slice"] is None:
        name = m["dataset"]
        if name.endswith("]") or name.rfind("[") > name.rfind("]"):
            raise slicing.SelectionError(
                f"malformed selection in {text!r}: write DATASET[SLICE], e.g. "
                f"'foo/ds.b2nd[1:3, ::2]', with one '[' and one ']'")
    paths.split_dataset(m["dataset"])
    return m["dataset"], m["slice"]


def jsonable_data(data: object) -> object:
    """Data as JSON values: text for bytes that decode as UTF-8 (else a list of byte
    values), nested lists for arrays, and for structured arrays an object per element
    that keeps the field names (``{"a": 1, "b": 0.5}``)."""
    if isinstance(data, bytes):
        try:
            return data.decode()
        except UnicodeDecodeError:
            return list(data)
    if isinstance(data, (np.ndarray, np.void)) and data.dtype.names:
        return records(data)
    if isinstance(data, (np.ndarray, np.generic)):
        return jsonable(data.tolist())
    return data


def records(data: np.ndarray | np.void) -> object:
    """A structured array as (nested lists of) dicts by field name; nested fields too."""
    if isinstance(data, np.void) or data.ndim == 0:
        names = data.dtype.names or ()
        return {name: jsonable_data(data[name]) for name in names}
    return [records(item) for item in data]


def pretty(value: object) -> None:
    try:
        from rich.pretty import pprint
    except ImportError:  # rich is optional (the 'clients' extra)
        print(json.dumps(value, indent=4))
        return
    pprint(value, expand_all=False, indent_guides=False)


# -- commands ---------------------------------------------------------------------------

def cmd_roots(client: cat2.Client, args: argparse.Namespace) -> None:
    roots = client.roots()
    if args.json:
        return print(json.dumps(roots))
    for name, info in roots.items():
        marks = " (subscribed)" if info.get("subscribed") else ""
        marks += " (unreachable)" if info.get("reachable") is False else ""
        print(f"{name}{marks}")


def cmd_subscribe(client: cat2.Client, args: argparse.Namespace) -> None:
    answer = client.subscribe(args.root)
    print(json.dumps(answer) if args.json else answer)


def cmd_unsubscribe(client: cat2.Client, args: argparse.Namespace) -> None:
    answer = client.unsubscribe(args.root)
    print(json.dumps(answer) if args.json else answer)


def cmd_list(client: cat2.Client, args: argparse.Namespace) -> None:
    names = [f"{args.root}/{p}" for p in client.list(args.root)]
    print(json.dumps(names) if args.json else "\n".join(names))


def cmd_url(client: cat2.Client, args: argparse.Namespace) -> None:
    urls = client.url(args.name)
    if args.json:
        return print(json.dumps(urls))
    print("\n".join(urls + hop_lines(client, args.name.split("/", 1)[0])))


def cmd_info(client: cat2.Client, args: argparse.Namespace) -> None:
    info = client.info(args.dataset)
    if args.json:
        return print(json.dumps(info))
    pretty(info)
    lines = hop_lines(client, args.dataset.split("/", 1)[0])
    if lines:
        print("\n".join(["source:", *lines]))


def hop_lines(client: cat2.Client, root: str) -> list[str]:
    """Where a re-published root comes from, one line per hop, nearest first (none for a
    root served by its origin, or if the subscriber cannot say)."""
    try:
        source = client.source(root)
    except cat2.ServerError:
        return []  # (a subscriber without re-publishing: every root is its own origin)
    hops = source.get("hops") or []
    lines = []
    for n, hop in enumerate(hops):
        last = n == len(hops) - 1
        lines.append(f"  re-publishes root {hop['root']!r} of the subscriber at "
                     f"{hop['subscriber']}, served by {hop['publisher']}"
                     + (" (the origin)" if last else ""))
    if source.get("hops") is None:
        lines.append("  (its publisher could not be asked whether it re-publishes)")
    return lines


def cmd_show(client: cat2.Client, args: argparse.Namespace) -> None:
    dataset, text = split_selection(args.dataset)
    key = slicing.parse_slice(text)
    data = client.get_dataset(dataset).fetch(key)
    if args.json:
        return print(json.dumps(jsonable_data(data)))
    if isinstance(data, bytes):
        try:
            print(data.decode())
        except UnicodeDecodeError:
            print(data)
    else:
        print(data)


def cmd_download(client: cat2.Client, args: argparse.Namespace) -> None:
    dataset = client.get_dataset(args.dataset)
    # (a bar on a terminal only: pipes and --json get exactly the output they always got)
    with progress.terminal_bar(f"Downloading {args.dataset}", enabled=not args.json) as bar:
        saved = dataset.download(args.output_dir, progress=bar)
    print(json.dumps({"path": str(saved)}) if args.json else f"Dataset saved to {saved}")


def human_bytes(n: float) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as ``--cache-size`` takes them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def cmd_cache(client: cat2.Client, args: argparse.Namespace) -> None:
    figures = client.cache()
    if args.json:
        return print(json.dumps(figures))
    usage, limit = figures["usage"], figures["limit"]
    bound = f"of {human_bytes(limit)} ({usage / limit:.0%})" if limit else "(no limit)"
    reads = figures["hits"] + figures["misses"]
    ratio = f" ({figures['hits'] / reads:.0%} hits)" if reads else ""
    print(f"cache: {human_bytes(usage)} used {bound}")
    print(f"chunks read: {figures['hits']} hits, {figures['misses']} misses{ratio}")
    print(f"evictions: {figures['evictions']} ({human_bytes(figures['evicted_bytes'])})")
    print(f"digest mismatches: {figures['digest_mismatches']}")
    print(f"bytes in from publishers: {human_bytes(figures['bytes_in'])}; "
          f"out to clients: {human_bytes(figures['bytes_out'])}")
    roots = figures.get("roots") or {}
    if roots:
        width = max(4, *(len(name) for name in roots))
        print(f"\n{'root':<{width}}  {'hits':>8}  {'misses':>8}  {'mismatches':>10}  "
              f"{'bytes in':>10}  {'bytes out':>10}")
        for name, r in roots.items():
            print(f"{name:<{width}}  {r['hits']:>8}  {r['misses']:>8}  "
                  f"{r['digest_mismatches']:>10}  {human_bytes(r['bytes_in']):>10}  "
                  f"{human_bytes(r['bytes_out']):>10}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default=argparse.SUPPRESS,
                        help="HOST:PORT of the subscriber (default: $CATERVA2_SUBSCRIBER, "
                             "else from caterva2.toml, else localhost:8002)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--conf", default=argparse.SUPPRESS,
                        help="configuration file, which must exist (default: "
                             "./caterva2.toml, if there is one)")
    common.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="a user's API key, for a subscriber that requires a login "
                             "(default: $CATERVA2_API_KEY, which keeps it out of the "
                             "process list)")
    parser = argparse.ArgumentParser(
        prog="cat2cli", parents=[common],
        description="Caterva2 command-line client: ask a subscriber for roots and data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_, *arguments):
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        for arg, arg_help in arguments:
            p.add_argument(arg, help=arg_help, **({"nargs": "?"} if arg == "output_dir" else {}))
        p.set_defaults(func=func)

    command("roots", cmd_roots, "list the roots known to the subscriber")
    command("subscribe", cmd_subscribe, "make the subscriber follow a root",
            ("root", "root name, e.g. foo"))
    command("unsubscribe", cmd_unsubscribe, "make the subscriber stop following a root "
            "and drop what it cached of it", ("root", "root name, e.g. foo"))
    command("list", cmd_list, "list the datasets of a subscribed root",
            ("root", "root name, e.g. foo"))
    command("url", cmd_url, "where a root (or ROOT/PATH) is served",
            ("name", "root name or ROOT/PATH, e.g. foo"))
    command("info", cmd_info, "show the metadata of a dataset",
            ("dataset", "ROOT/PATH, e.g. foo/dir1/ds-2d.b2nd"))
    command("show", cmd_show, "print data of a dataset, optionally a slice",
            ("dataset", "ROOT/PATH[SLICE], e.g. 'foo/dir1/ds-2d.b2nd[1, ::5]'"))
    command("download", cmd_download, "save a complete copy of a dataset locally",
            ("dataset", "ROOT/PATH, e.g. foo/dir2/ds-4d.b2nd"),
            ("output_dir", "directory to save under (default: the current one)"))
    command("cache", cmd_cache, "the subscriber's cache: usage, limit, hits, misses, "
            "evictions, digest mismatches, bytes in and out per root")
    return parser


@contextlib.contextmanager
def unverified_as_lines() -> Iterator[None]:
    """UnverifiedWarnings shown as one ``cat2cli: warning: ...`` line each on stderr (the
    same one once), as they come; other warnings as usual."""
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", cat2.UnverifiedWarning)
        show = warnings.showwarning

        def show_line(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, cat2.UnverifiedWarning):
                return show(message, category, filename, lineno, file, line)
            if str(message) not in seen:
                seen.add(str(message))
                print(f"cat2cli: warning: {message}", file=sys.stderr, flush=True)

        warnings.showwarning = show_line
        yield


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        with cat2.Client(getattr(args, "host", None),
                         conf=getattr(args, "conf", None),
                         api_key=getattr(args, "api_key", None)) as client:
            try:
                with unverified_as_lines():
                    args.func(client, args)
            except cat2.ServerError as e:
                fail(e.detail)
            except cat2.ConnectionFailed as e:
                fail(str(e))
            except httpx.HTTPError as e:
                fail(f"talking to the subscriber at {client.host}: {type(e).__name__}: {e}")
    except config.ConfigError as e:
        fail(str(e), status=2)  # (as the services and argparse do for a usage mistake)
    except (ValueError, OSError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted")


def fail(message: str, status: int = 1) -> None:
    print(f"cat2cli: error: {message}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
