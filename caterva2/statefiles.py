"""State files of the services: written atomically, read forgivingly."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
from typing import Any

log = logging.getLogger("caterva2")


def atomic_write(path: pathlib.Path | str, data: str | bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half.

    ``durable`` waits until the data is on the disk (so a power cut cannot lose it); a file
    that is only a help (its loss costs a refetch) goes without, which is much faster."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: pathlib.Path | str, default: Any) -> Any:
    """A JSON state file, or ``default`` when it is missing or unreadable."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable state file %s: %s", path, e)
        return default
