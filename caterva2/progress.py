"""Progress bars for long commands (``cat2cli download``, ``cat2import``, ``cat2export``).

Work that can take long tells its progress to a :data:`Progress` callback:
``progress(done, total)``, in bytes (``total`` None when not known).  The library and the
tools take such a callback and know nothing of how it is shown.

The commands get theirs from :func:`terminal_bar`: a bar drawn with rich on stderr, and
only for a person watching a terminal.  With rich missing (it comes with the ``clients``
extra), in pipes and redirections, or with ``--json``, there is no callback at all and the
output is byte for byte what it would be without bars.  The bar is transient: it goes
away when the work is done, leaving the usual final line alone on the screen.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

Progress = Callable[[int, "int | None"], None]
"""``progress(done, total)``: bytes done so far, out of ``total`` (None: unknown)."""


def on_terminal() -> bool:
    """Whether a person is likely watching: both stdout and stderr are terminals (a bar
    on a terminal while the output goes to a pipe would only mix with what the pipe's
    reader shows)."""
    return all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))


@contextlib.contextmanager
def terminal_bar(description: str, *, enabled: bool = True,
                 console: Any = None) -> Iterator[Progress | None]:
    """A transient progress bar as a :data:`Progress` callback, or None to show nothing.

    None unless ``enabled`` (False for ``--json``), rich can be imported and either
    ``console`` (a ``rich.console.Console``, as tests give one) is given or
    :func:`on_terminal`.  The bar shows ``description``, a percentage, the bytes done and
    the time left.
    """
    if not enabled or (console is None and not on_terminal()):
        yield None
        return
    try:
        from rich import progress as rich_progress
    except ImportError:  # rich is optional (the 'clients' extra): no bar, same work
        yield None
        return
    columns = (rich_progress.TextColumn("{task.description}"), rich_progress.BarColumn(),
               rich_progress.TaskProgressColumn(), rich_progress.DownloadColumn(),
               rich_progress.TimeRemainingColumn())
    with rich_progress.Progress(*columns, console=console or _stderr_console(),
                                transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


class Counter:
    """Bytes done, told to ``progress`` (if any) as they add up, out of ``total``."""

    def __init__(self, progress: Progress | None, total: int | None):
        self.progress, self.total, self.done = progress, total, 0
        self.add(0)

    def add(self, nbytes: int) -> None:
        self.done += nbytes
        if self.progress is not None:
            done = self.done if self.total is None else min(self.done, self.total)
            self.progress(done, self.total)
