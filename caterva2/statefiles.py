"""State files of the services: written atomically, read forgivingly."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import secrets
import stat
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


def private_key(path: pathlib.Path | str) -> str:
    """The secret key kept in ``path``; made with :func:`secrets.token_urlsafe` and saved,
    readable by its owner only (mode 0600), if there is none yet.

    Two processes making it at once end up with the same key (the file is put in place
    with ``os.link``, which never replaces).  ValueError if the file is there but holds
    no key; a warning if others than its owner may read it.
    """
    path = pathlib.Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:  # (mkstemp makes files of mode 0600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # (another process made it first: its key is the one)
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)
    key = path.read_text().strip()
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"{path} holds no valid key; remove it to have a new one made")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s may be read by others than its owner: chmod 600 it", path)
    return key
