"""The subscriber's cache: root indexes and on-demand replicas of datasets.

Layout under ``STATEDIR/cache``::

    roots/ROOT/index.json                       every dataset of the root: version + metadata
    roots/ROOT/data/PATH/VTAG/replica.b2        sparse replica, chunks filled on demand
    roots/ROOT/data/PATH/VTAG/replica.b2.digests   the digests of the chunks it holds
    roots/ROOT/data/PATH/VTAG/entry.json        the version and metadata it replicates
    roots/ROOT/data/PATH/.previous/...          the version before, until the next is read

Each version of a dataset has its own directory (VTAG is a short hash of its version tag),
so a chunk of an old version can never land in a new one.  A change moves the old version's
directory to ``.previous``: when the new version is first read, the chunks whose digests
did not change are copied from it (only changed chunks cross the network), and it goes.
Replicas are :class:`caterva2.replica.SparseReplica`: see there how a replica is filled,
checked, and what happens to one damaged by a crash.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import threading
import uuid
import weakref
from collections import OrderedDict

import numpy as np
from pydantic import TypeAdapter, ValidationError

from caterva2 import paths
from caterva2.models import DatasetEntry, chunk_layout
from caterva2.replica import SparseReplica
from caterva2.statefiles import atomic_write

log = logging.getLogger("caterva2.cache")
MAX_OPEN_REPLICAS = 256
PREVIOUS = ".previous"  # the directory of the version before the current one
Index = dict[str, DatasetEntry]
_INDEX = TypeAdapter(Index)
ReplicaKey = tuple[str, str, str]  # root, path, version


def version_tag(version: str) -> str:
    """A short, filesystem-safe name for a version tag."""
    return hashlib.sha1(version.encode()).hexdigest()[:16]


class Cache:
    """Indexes and replicas of every subscribed root.  Methods may block: call from a thread
    (except :meth:`loaded_index`)."""

    def __init__(self, directory: pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.indexes: dict[str, Index] = {}
        # Replicas kept open (the most recently used), and every replica still in use
        # anywhere (a long download may outlive its place among the recent): one object
        # per replica, never two handles appending to one file.
        self.recent: OrderedDict[ReplicaKey, SparseReplica] = OrderedDict()
        self.in_use: weakref.WeakValueDictionary[ReplicaKey, SparseReplica] = \
            weakref.WeakValueDictionary()
        self.lock = threading.RLock()

    def _root_dir(self, root: str) -> pathlib.Path:
        return self.directory / "roots" / paths.check_root_name(root)

    def _data_dir(self, root: str, path: str) -> pathlib.Path:
        return self._root_dir(root) / "data" / paths.check_relpath(path)

    # -- indexes ----------------------------------------------------------------------
    def index(self, root: str) -> Index | None:
        """The cached index of ``root`` (path → entry), or None if never fetched."""
        with self.lock:
            if root not in self.indexes:
                file = self._root_dir(root) / "index.json"
                try:
                    self.indexes[root] = _INDEX.validate_json(file.read_bytes())
                except FileNotFoundError:
                    return None
                except (OSError, ValidationError) as e:
                    log.warning("ignoring unreadable index %s: %s", file, e)
                    return None
            return self.indexes[root]

    def loaded_index(self, root: str) -> Index | None:
        """The index of ``root`` if already in memory (never blocks: callable from async code)."""
        return self.indexes.get(root)

    def set_index(self, root: str, datasets: Index) -> None:
        """Replace a root's index, dropping replicas of changed and deleted datasets."""
        datasets = {p: e for p, e in datasets.items() if _safe(p)}
        with self.lock:
            old = self.index(root) or {}
            atomic_write(self._root_dir(root) / "index.json", _INDEX.dump_json(datasets))
            self.indexes[root] = datasets
            for path, entry in old.items():
                new = datasets.get(path)
                if new is None or new.version != entry.version:
                    self._drop(root, path, keep=new, replaced=entry.version)

    def update(self, root: str, changed: Index, deleted: list[str]) -> None:
        """Apply a change to a root's index."""
        with self.lock:
            datasets = dict(self.index(root) or {})
            datasets.update(changed)
            for path in deleted:
                datasets.pop(path, None)
            self.set_index(root, datasets)

    def _drop(self, root: str, path: str, keep: DatasetEntry | None,
              replaced: str | None = None) -> None:
        """Forget every version of a dataset but ``keep``'s; the ``replaced`` version's
        replica, if any, becomes the previous one (unless the dataset is gone)."""
        for key in [k for k in self.in_use if k[:2] == (root, path)]:
            if keep is None or key[2] != keep.version:
                self._forget(key)
        data_dir = self._data_dir(root, path)
        if not data_dir.is_dir():
            return
        if keep is not None and replaced is not None:
            replaced_dir = data_dir / version_tag(replaced)
            if (replaced_dir / "replica.b2").exists():
                _trash(data_dir / PREVIOUS, self.directory)
                os.replace(replaced_dir, data_dir / PREVIOUS)
        spared = {version_tag(keep.version), PREVIOUS} if keep else set()
        for child in data_dir.iterdir():
            if child.name not in spared:
                _trash(child, self.directory)

    # -- the version before -------------------------------------------------------------
    def has_previous(self, root: str, path: str) -> bool:
        """Whether a replica of the dataset's version before the current one is kept."""
        return (self._data_dir(root, path) / PREVIOUS / "replica.b2").exists()

    def drop_previous(self, root: str, path: str) -> None:
        with self.lock:
            _trash(self._data_dir(root, path) / PREVIOUS, self.directory)

    def take_previous(self, root: str, path: str, replica: SparseReplica,
                      digests: np.ndarray) -> int:
        """Copy into ``replica`` the chunks of the previous version whose digests are
        ``digests`` (the new version's), then drop the previous version.  Nothing is copied
        unless both versions have the same layout.  Returns how many chunks were copied."""
        previous_dir = self._data_dir(root, path) / PREVIOUS
        copied = 0
        with self.lock:
            try:
                old = DatasetEntry.model_validate_json(
                    (previous_dir / "entry.json").read_bytes())
                if old.meta is None or chunk_layout(old.meta) != chunk_layout(replica.meta):
                    return 0
                before = SparseReplica(previous_dir / "replica.b2", old.meta)
                same = np.flatnonzero((before.digests == digests) & (digests != 0))
                for n in replica.missing([int(n) for n in same]):
                    [chunk] = before.read_chunks([n])  # (checked against its digest)
                    replica.store(n, chunk)
                    copied += 1
                del before
            except (OSError, ValueError, RuntimeError) as e:  # a damaged or odd old replica
                log.warning("previous version of %s/%s not reused: %s", root, path, e)
            finally:
                _trash(previous_dir, self.directory)
        return copied

    # -- replicas ---------------------------------------------------------------------
    def replica(self, root: str, path: str, entry: DatasetEntry) -> SparseReplica:
        """The replica of this version of a dataset, created (empty) if needed."""
        if entry.meta is None:
            raise ValueError(f"{root}/{path} has no metadata: it cannot be cached")
        key = (root, path, entry.version)
        with self.lock:
            replica = self.in_use.get(key)
            if replica is None:
                directory = self._data_dir(root, path) / version_tag(entry.version)
                replica = SparseReplica(directory / "replica.b2", entry.meta)
                if not (directory / "entry.json").exists():  # (for reuse by the next version)
                    atomic_write(directory / "entry.json", entry.model_dump_json())
                self.in_use[key] = replica
            self.recent[key] = replica
            self.recent.move_to_end(key)
            while len(self.recent) > MAX_OPEN_REPLICAS:
                self.recent.popitem(last=False)
            return replica

    def _forget(self, key: ReplicaKey) -> None:
        """Stop handing out this replica (its readers and writers keep their object)."""
        self.recent.pop(key, None)
        self.in_use.pop(key, None)

    def discard(self, root: str, path: str, entry: DatasetEntry) -> None:
        """Throw away a replica found to be damaged; the next read rebuilds it."""
        with self.lock:
            self._forget((root, path, entry.version))
            _trash(self._data_dir(root, path) / version_tag(entry.version), self.directory)


def _safe(path: str) -> bool:
    try:
        paths.check_relpath(path)
        return True
    except ValueError:
        log.warning("ignoring dataset with unsafe path %r", path)
        return False


def _trash(target: pathlib.Path, cache_dir: pathlib.Path) -> None:
    """Remove a directory: first renamed away (atomic), then deleted."""
    if not target.exists():
        return
    trash = cache_dir / ".trash" / uuid.uuid4().hex
    trash.parent.mkdir(exist_ok=True)
    try:
        os.replace(target, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
