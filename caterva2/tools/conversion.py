"""What cat2import and cat2export share: warnings, one-line errors and the final summary."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from caterva2.h5convert import ConversionError
from caterva2.progress import Progress, terminal_bar


def run_conversion(prog: str, verb: str, doing: str,
                   convert: Callable[[Callable[[str], None], Progress | None], Any],
                   target: str, quiet: bool) -> None:
    """Run ``convert(warn, progress)``; report its result, or fail with one line and exit
    status 1.

    ``convert`` returns a report with ``datasets``, ``nbytes`` and ``skipped``.  On a
    terminal, ``progress`` draws a bar labelled ``doing`` (see :mod:`caterva2.progress`;
    warnings are printed above it); elsewhere it is None and the output is as without bars.
    """
    def warn(message: str) -> None:
        if not quiet:  # (sys.stderr looked up now: rich puts its own in while drawing)
            print(f"{prog}: warning: {message}", file=sys.stderr)

    try:
        with terminal_bar(doing) as progress:
            report = convert(warn, progress)
    except ConversionError as e:
        sys.exit(f"{prog}: error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"{prog}: interrupted; nothing written")
    except Exception as e:  # noqa: BLE001 - one clear line, no traceback
        sys.exit(f"{prog}: error: {type(e).__name__}: {e}")
    print(f"{verb} {report.datasets} datasets ({report.nbytes / 1e6:.1f} MB) into {target}")
    if report.skipped:
        print(f"Skipped {len(report.skipped)} objects:")
        for message in report.skipped:
            print(f"  {message}")
