"""Progress bars of ``cat2cli download``, ``cat2import`` and ``cat2export``: drawn on a
terminal (here a pseudo-terminal, as a person's), absent from pipes and ``--json``, where
the output stays exactly what it was."""
from __future__ import annotations

import io
import itertools
import json
import os
import pathlib
import pty
import subprocess
import sys

import blosc2
import numpy as np
import pytest

from caterva2 import progress

PACKAGE_PARENT = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT), "TERM": "xterm", "COLUMNS": "100"}
for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
    ENV.pop(name, None)
BAR = "━"  # (rich's bar)


def in_terminal(*args: str, cwd: pathlib.Path) -> tuple[int, str]:
    """Run ``python -m ARGS`` with stdout and stderr on a pseudo-terminal; (status, all it
    wrote there)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, cwd=cwd, env=ENV)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # (EIO: the program ended, the terminal closed)
            break
        if not data:
            break
        out += data
    os.close(master)
    return proc.wait(60), out.decode(errors="replace")


def in_pipes(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, text=True,
                          capture_output=True, timeout=60, check=False)


# -- the bar itself ----------------------------------------------------------------------

def test_no_bar_off_a_terminal_or_when_disabled():
    with progress.terminal_bar("Downloading") as bar:  # (pytest captures: no terminal)
        assert bar is None
    rich_console = pytest.importorskip("rich.console")
    console = rich_console.Console(file=io.StringIO(), force_terminal=True)
    with progress.terminal_bar("Downloading", enabled=False, console=console) as bar:
        assert bar is None
    assert console.file.getvalue() == ""


def test_without_rich_there_is_no_bar_and_no_error(monkeypatch):
    rich_console = pytest.importorskip("rich.console")
    console = rich_console.Console(file=io.StringIO(), force_terminal=True)
    for name in ("rich", "rich.progress"):  # (as if not installed)
        monkeypatch.setitem(sys.modules, name, None)
    with progress.terminal_bar("Downloading", console=console) as bar:
        assert bar is None
    assert console.file.getvalue() == ""


def test_a_terminal_gets_a_bar_with_its_label_and_figures():
    rich_console = pytest.importorskip("rich.console")
    out = io.StringIO()
    console = rich_console.Console(file=out, force_terminal=True, width=100)
    with progress.terminal_bar("Downloading foo/a.b2nd", console=console) as bar:
        assert bar is not None
        bar(5_000_000, 10_000_000)
        bar(10_000_000, 10_000_000)
    text = out.getvalue()
    assert "Downloading foo/a.b2nd" in text and BAR in text
    assert "100%" in text and "10.0 MB" in text, text


def test_counter_tells_bytes_done_and_never_passes_the_total():
    seen: list[tuple[int, int | None]] = []
    counter = progress.Counter(lambda done, total: seen.append((done, total)), 100)
    counter.add(60)
    counter.add(60)
    assert seen == [(0, 100), (60, 100), (100, 100)]


# -- cat2import and cat2export -----------------------------------------------------------

@pytest.fixture
def h5file(tmp_path) -> pathlib.Path:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/x", data=np.arange(4_000_000, dtype="float64"),
                         chunks=(100_000,))
        f.create_dataset("y", data=np.arange(10, dtype="int8"))
    return path


def test_cat2import_and_cat2export_show_bars_on_a_terminal(h5file, tmp_path):
    status, out = in_terminal("caterva2.tools.h5import", str(h5file), "root", cwd=tmp_path)
    assert status == 0, out
    assert f"Importing {h5file}" in out and BAR in out, out
    assert out.rstrip().endswith("Imported 2 datasets (32.0 MB) into root"), out

    status, out = in_terminal("caterva2.tools.h5export", "root", "back.h5", cwd=tmp_path)
    assert status == 0, out
    assert "Exporting root" in out and BAR in out, out
    assert out.rstrip().endswith("Exported 2 datasets (32.0 MB) into back.h5"), out


def test_cat2import_and_cat2export_in_pipes_print_only_their_summary(h5file, tmp_path):
    done = in_pipes("caterva2.tools.h5import", str(h5file), "root", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "Imported 2 datasets (32.0 MB) into root\n", "")
    done = in_pipes("caterva2.tools.h5export", "root", "back.h5", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "Exported 2 datasets (32.0 MB) into back.h5\n", "")


def test_import_and_export_tell_progress_up_to_the_total(h5file, tmp_path):
    from caterva2.tools.h5export import export_root
    from caterva2.tools.h5import import import_hdf5

    seen: list[tuple[int, int | None]] = []
    import_hdf5(h5file, tmp_path / "root", lambda m: None,
                progress=lambda done, total: seen.append((done, total)))
    assert len(seen) > 40  # (chunk by chunk: 40 chunks of x)
    assert seen[-1] == (32_000_010, 32_000_010)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))

    seen.clear()
    export_root(tmp_path / "root", tmp_path / "back.h5", lambda m: None,
                progress=lambda done, total: seen.append((done, total)))
    on_disk = sum(f.stat().st_size for f in (tmp_path / "root").rglob("*") if f.is_file())
    assert len(seen) > 40 and seen[-1] == (on_disk, on_disk)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))


# -- cat2cli download --------------------------------------------------------------------

@pytest.fixture
def big_root(stack, tmp_path) -> str:
    """The subscriber of a private deployment publishing a 24 MB dataset ``big/x.b2nd``."""
    import caterva2 as cat2

    source = tmp_path / "big"
    source.mkdir()
    blosc2.asarray(np.random.default_rng(1).random(3_000_000),
                   urlpath=str(source / "x.b2nd"), mode="w", chunks=(250_000,))
    host = stack.publish_root("big", source).host
    cat2.subscribe("big", host)
    return host


def test_cat2cli_download_shows_a_bar_on_a_terminal_only(big_root, tmp_path):
    big_dataset = "big/x.b2nd"
    args = ("caterva2.cli", "--host", big_root, "download", big_dataset)
    status, out = in_terminal(*args, "t", cwd=tmp_path)
    assert status == 0, out
    assert f"Downloading {big_dataset}" in out and BAR in out, out
    assert out.rstrip().endswith(f"Dataset saved to t/{big_dataset}"), out

    done = in_pipes(*args, "p", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"Dataset saved to p/{big_dataset}\n", "")

    status, out = in_terminal(*args, "j", "--json", cwd=tmp_path)
    assert status == 0 and BAR not in out and "Downloading" not in out, out
    assert json.loads(out) == {"path": f"j/{big_dataset}"}
    for where in "tpj":
        assert blosc2.open(str(tmp_path / where / big_dataset)).shape == (3_000_000,)
