"""The subscriber's cache: root indexes and on-demand replicas of datasets, within a bound.

Layout under ``STATEDIR/cache``::

    roots/ROOT/index.json                       every dataset of the root: version + metadata
    roots/ROOT/data/PATH/VTAG/replica.b2        sparse replica, chunks filled on demand
    roots/ROOT/data/PATH/VTAG/replica.b2.digests   the digests of the chunks it holds
    roots/ROOT/data/PATH/VTAG/replica.b2.part-N    blocks of chunk N, held in part (with
    roots/ROOT/data/PATH/VTAG/replica.b2.part-N.digests    the digests of its pieces)
    roots/ROOT/data/PATH/VTAG/entry.json        the version and metadata it replicates
    roots/ROOT/data/PATH/.previous/...          the version before, until the next is read
    .trash/                                     directories being removed

Each version of a dataset has its own directory (VTAG is a short hash of its version tag),
so a chunk of an old version can never land in a new one.  A change moves the old version's
directory to ``.previous``: when the new version is first read, the chunks whose digests
did not change are copied from it (only changed chunks cross the network), and it goes.
Replicas are :class:`caterva2.replica.SparseReplica`: see there how a replica is filled,
checked, and what happens to one damaged by a crash.

**The bound** (``cat2sub --cache-size``): the cache keeps a running count of the bytes its
files take (found by one scan at start, then updated by every write, creation and removal
of a replica), and every write asks for room first (:meth:`Cache.reserve`).  Room is made by
evicting whole replicas, least recently used (read or written) first: a Blosc2 frame cannot
give back the room of one chunk.  A replica that an answer in flight uses is never evicted;
when what is left cannot make room, the write fails with
:class:`~caterva2.services.errors.CacheTooSmall` (a 507 that says so).  After a restart,
least recently used means least recently written.

**Leases.**  Every replica handed out while an HTTP answer is being made is leased to that
answer until its last byte is sent (:func:`~caterva2.services.subscriber.leases.leasing`, around every request), and each chunk
download leases the replica it writes into (:meth:`Cache.hold`, :meth:`Cache.release`).
A leased replica is never evicted nor closed; once the cache stops handing a replica out
(evicted, dropped for a new version, found damaged, or beyond the replicas kept open) it is
closed as soon as its last lease ends, so a removed file never stays open to hold its room.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from pydantic import TypeAdapter, ValidationError

from caterva2 import paths
from caterva2.config import format_size
from caterva2.models import DatasetEntry, chunk_layout
from caterva2.replica import SparseReplica
from caterva2.services.errors import CacheTooSmall
from caterva2.services.subscriber.leases import current_leases
from caterva2.statefiles import atomic_write

log = logging.getLogger("caterva2.cache")
MAX_OPEN_REPLICAS = 256  # replicas kept open while unused (for fast reads)...
MAX_OPEN_CHUNKS = 2**24  # ...holding at most this many chunks (an open index: 8 B a chunk)
BLOCK = 4096  # files are counted in whole blocks of this size, as a filesystem takes them
REPLICA_FILE = "replica.b2"
PREVIOUS = ".previous"  # the directory of the version before the current one
Index = dict[str, DatasetEntry]
_INDEX = TypeAdapter(Index)
ReplicaKey = tuple[str, str, str]  # root, path, version


class Holding(NamedTuple):
    """What the cache holds of one dataset version (see :meth:`Cache.holding`)."""

    chunks: int  # chunks held whole
    nchunks: int  # chunks the dataset has
    nbytes: int  # bytes its replica and the files beside it take on disk


def version_tag(version: str) -> str:
    """A short, filesystem-safe name for a version tag."""
    return hashlib.sha1(version.encode()).hexdigest()[:16]


class Cache:
    """Indexes and replicas of every subscribed root, in at most ``limit`` bytes (None: no
    bound).  ``on_evict(nbytes)`` is called for each replica evicted to make room.

    Methods may block: call them from a thread, except :meth:`loaded_index`, :meth:`hold`,
    :meth:`release` and :meth:`usage`, which never wait for the disk.
    """

    def __init__(self, directory: pathlib.Path, limit: int | None = None,
                 on_evict: Callable[[int], None] | None = None):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.on_evict = on_evict
        self.indexes: dict[str, Index] = {}
        self.lock = threading.RLock()  # indexes, replicas, sizes (may be held while writing)
        # Replicas handed out and still open: one object per replica, never two handles
        # appending to one file.  Those used last are kept open while unused (``recent``);
        # the others close when their last user lets go.  ``_users``, ``recent`` and
        # ``_doomed`` (no longer handed out, closed at their last release) change under
        # ``_lease_lock``, which is never held while waiting for the disk.
        self.replicas: dict[ReplicaKey, SparseReplica] = {}
        self.recent: OrderedDict[ReplicaKey, SparseReplica] = OrderedDict()
        self._recent_chunks = 0
        self._users: dict[SparseReplica, int] = {}
        self._doomed: set[SparseReplica] = set()
        self._closed_by_users = False
        self._lease_lock = threading.Lock()
        # Bytes on disk: replica directories, least recently used first; indexes; and room
        # reserved for writes under way.
        self.sizes: OrderedDict[pathlib.Path, int] = OrderedDict()
        self._data_bytes = 0
        self.index_bytes: dict[str, int] = {}
        self._index_total = 0
        self.reserved = 0
        with self.lock:
            self._scan()

    def _root_dir(self, root: str) -> pathlib.Path:
        return self.directory / "roots" / paths.check_root_name(root)

    def _data_dir(self, root: str, path: str) -> pathlib.Path:
        return self._root_dir(root) / "data" / paths.check_relpath(path)

    def _replica_dir(self, key: ReplicaKey) -> pathlib.Path:
        return self._data_dir(key[0], key[1]) / version_tag(key[2])

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
            old = self.index(root)
            if old == datasets:  # (nothing to write: so a full disk does not fail a resync)
                return
            old = old or {}
            file = self._root_dir(root) / "index.json"
            atomic_write(file, _INDEX.dump_json(datasets))
            self._set_index_size(root, _blocks(file.stat().st_size))
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

    def drop_root(self, root: str) -> None:
        """Forget ``root`` (unsubscribed): its index and every replica, counted out of the
        cache's bytes (replicas in use close when their last user lets go)."""
        with self.lock:
            for key in [k for k in self.replicas if k[0] == root]:
                self._retire(key)
            root_dir = self._root_dir(root)
            for directory in [d for d in self.sizes if root_dir in d.parents]:
                self._set_size(directory, 0)
            self._remove_dir(root_dir)
            self._set_index_size(root, 0)
            del self.index_bytes[root]
            self.indexes.pop(root, None)

    def _drop(self, root: str, path: str, keep: DatasetEntry | None,
              replaced: str | None = None) -> None:
        """Forget every version of a dataset but ``keep``'s; the ``replaced`` version's
        replica, if any, becomes the previous one (unless the dataset is gone)."""
        for key in [k for k in self.replicas if k[:2] == (root, path)]:
            if keep is None or key[2] != keep.version:
                self._retire(key)
        data_dir = self._data_dir(root, path)
        if not data_dir.is_dir():
            return
        if keep is not None and replaced is not None:
            replaced_dir, previous_dir = data_dir / version_tag(replaced), data_dir / PREVIOUS
            if (replaced_dir / REPLICA_FILE).exists():
                self._remove_dir(previous_dir)
                os.replace(replaced_dir, previous_dir)
                size = self.sizes.pop(replaced_dir, 0)  # (moved: the total stays)
                if size:
                    self.sizes[previous_dir] = size
                    self.sizes.move_to_end(previous_dir, last=False)  # (evicted first)
        spared = {version_tag(keep.version), PREVIOUS} if keep else set()
        for child in data_dir.iterdir():
            if child.name not in spared:
                self._remove_dir(child)

    # -- the version before -------------------------------------------------------------
    def has_previous(self, root: str, path: str) -> bool:
        """Whether a replica of the dataset's version before the current one is kept."""
        return (self._data_dir(root, path) / PREVIOUS / REPLICA_FILE).exists()

    def drop_previous(self, root: str, path: str) -> None:
        with self.lock:
            self._remove_dir(self._data_dir(root, path) / PREVIOUS)

    def take_previous(self, root: str, path: str, replica: SparseReplica,
                      digests: np.ndarray) -> int:
        """Copy into ``replica`` the chunks of the previous version whose digests are
        ``digests`` (the new version's), then drop the previous version.  Nothing is copied
        unless both versions have the same layout.  Returns how many chunks were copied."""
        previous_dir = self._data_dir(root, path) / PREVIOUS
        copied = 0
        with self.lock:
            size = self.sizes.pop(previous_dir, 0)  # (not evicted while read from)
            try:
                old = DatasetEntry.model_validate_json(
                    (previous_dir / "entry.json").read_bytes())
                if old.meta is None or chunk_layout(old.meta) != chunk_layout(replica.meta):
                    return 0
                before = SparseReplica(previous_dir / REPLICA_FILE, old.meta)
                same = np.flatnonzero((before.digests == digests) & (digests != 0))
                for n in replica.missing([int(n) for n in same]):
                    [chunk] = before.read_chunks([n])  # (checked against its digest)
                    replica.store(n, chunk)
                    copied += 1
                before.close()
            except (OSError, ValueError, RuntimeError) as e:  # a damaged or odd old replica
                log.warning("previous version of %s/%s not reused: %s", root, path, e)
            finally:
                if size:
                    self.sizes[previous_dir] = size
                self._remove_dir(previous_dir)
        return copied

    # -- replicas ---------------------------------------------------------------------
    def replica(self, root: str, path: str, entry: DatasetEntry) -> SparseReplica:
        """The replica of this version of a dataset, created (empty) if needed, and leased
        to the answer in flight (see :func:`~caterva2.services.subscriber.leases.leasing`).

        Raises the disk's OSError if it cannot be created (CacheTooSmall if the bound
        leaves no room for it).
        """
        if entry.meta is None:
            raise ValueError(f"{root}/{path} has no metadata: it cannot be cached")
        key = (root, path, entry.version)
        with self.lock:
            with self._lease_lock:
                replica = self.replicas.get(key)
                if replica is not None and (replica in self._doomed or replica.closed):
                    replica = None  # (being closed by its last user: open it anew)
            if replica is None:
                replica = self._new_replica(self._replica_dir(key), entry)
                self.replicas[key] = replica
            leases = current_leases()
            if leases is not None:
                leases.add(self, replica)
            self._keep_open(key, replica)
            directory = replica.file.parent
            if directory in self.sizes:
                self.sizes.move_to_end(directory)
            return replica

    def touch(self, root: str, path: str, version: str) -> None:
        """Count a replica as just used by a read made elsewhere (a front worker, see
        :mod:`.front`), for the order of eviction.  ValueError for a bad name."""
        directory = self._replica_dir((root, path, version))
        with self.lock:
            if directory in self.sizes:
                self.sizes.move_to_end(directory)

    def _new_replica(self, directory: pathlib.Path, entry: DatasetEntry) -> SparseReplica:
        """Open (or create) the replica in ``directory``, within the bound, with the files
        beside it: its entry (for reuse by the next version) and its digests."""
        assert entry.meta is not None
        side_files = 3 * BLOCK  # (the entry, its temporary copy, the digests' first page)
        self._reserve(directory, side_files)
        try:
            replica = SparseReplica(directory / REPLICA_FILE, entry.meta, space=self)
            if not (directory / "entry.json").exists():
                atomic_write(directory / "entry.json", entry.model_dump_json(), durable=False)
        finally:
            self._settle(directory, side_files)
        return replica

    def _keep_open(self, key: ReplicaKey, replica: SparseReplica) -> None:
        """Count ``replica`` as just used; close those used longest ago beyond the number
        kept open (or, if still in use, once their users let go)."""
        unused = []
        with self._lease_lock:
            previous = self.recent.pop(key, None)
            if previous is not None:
                self._recent_chunks -= _nchunks(previous)
                if previous is not replica and previous not in self._users:
                    unused.append(previous)
            self.recent[key] = replica
            self._recent_chunks += _nchunks(replica)
            while len(self.recent) > 1 and (len(self.recent) > MAX_OPEN_REPLICAS or
                                            self._recent_chunks > MAX_OPEN_CHUNKS):
                _, oldest = self.recent.popitem(last=False)
                self._recent_chunks -= _nchunks(oldest)
                if oldest not in self._users:
                    unused.append(oldest)
            for old in unused:
                self._doomed.add(old)
        self._close(unused)
        if self._closed_by_users:  # (closed by release, which does not take self.lock)
            self._closed_by_users = False
            for stale in [k for k, r in self.replicas.items() if r.closed]:
                del self.replicas[stale]

    def hold(self, replica: SparseReplica) -> None:
        """Keep ``replica`` from being evicted or closed until :meth:`release`."""
        with self._lease_lock:
            self._users[replica] = self._users.get(replica, 0) + 1

    def release(self, replica: SparseReplica) -> None:
        """End one :meth:`hold`; a replica the cache no longer keeps is closed with its
        last one (quick: nobody is using it)."""
        with self._lease_lock:
            if replica not in self._users:
                log.error("released %s more often than held", replica.file)
                return
            users = self._users[replica] - 1
            if users > 0:
                self._users[replica] = users
                return
            self._users.pop(replica, None)
            kept = any(r is replica for r in self.recent.values())
            if kept and replica not in self._doomed:
                return
            self._doomed.add(replica)
            self._closed_by_users = True
        self._close([replica])

    def _close(self, replicas: list[SparseReplica]) -> None:
        for replica in replicas:
            replica.close()
            with self._lease_lock:
                self._doomed.discard(replica)

    def _retire(self, key: ReplicaKey) -> None:
        """Stop handing out this replica; it closes now, or when its last user lets go
        (its readers and writers keep their object meanwhile)."""
        replica = self.replicas.pop(key, None)
        with self._lease_lock:
            kept = self.recent.pop(key, None)
            if kept is not None:
                self._recent_chunks -= _nchunks(kept)
            if replica is None or replica in self._users:
                return  # (no longer kept: its last release closes it)
            self._doomed.add(replica)
        self._close([replica])

    def discard(self, root: str, path: str, entry: DatasetEntry,
                replica: SparseReplica | None = None) -> None:
        """Throw away a replica found to be damaged; the next read rebuilds it.  Given the
        ``replica`` found damaged, nothing is done if it was already replaced (a late
        writer of the old one must not throw away the new one)."""
        key = (root, path, entry.version)
        with self.lock:
            current = self.replicas.get(key)
            if replica is not None and current is not None and current is not replica:
                return
            self._retire(key)
            self._remove_dir(self._replica_dir(key))

    def holding(self, root: str, path: str, entry: DatasetEntry) -> Holding:
        """How much of this version of a dataset the cache holds now: chunks held whole
        (those with a digest noted) and the bytes its replica directory takes.  Creates
        nothing: a dataset never read holds nothing."""
        nchunks = entry.meta.schunk.nchunks if entry.meta is not None else 0
        key = (root, path, entry.version)
        directory = self._replica_dir(key)
        nbytes = _dir_bytes(directory)  # (counted only under a bound: measured here)
        with self.lock:
            replica = self.replicas.get(key)
            if replica is not None and not replica.closed:
                return Holding(int(np.count_nonzero(replica.digests)), nchunks, nbytes)
        try:  # (not open: its digests file says the same)
            digests = np.fromfile(directory / f"{REPLICA_FILE}.digests", dtype="<u8")
        except (FileNotFoundError, ValueError):
            return Holding(0, nchunks, nbytes)
        held = int(np.count_nonzero(digests)) if len(digests) == nchunks else 0
        return Holding(held, nchunks, nbytes)

    # -- the bound --------------------------------------------------------------------
    def usage(self) -> int:
        """Bytes the cache takes on disk now (with room reserved for writes under way)."""
        return self._data_bytes + self._index_total + self.reserved

    def reserve(self, replica: SparseReplica, nbytes: int) -> None:
        """Room for ``replica`` to grow by ``nbytes`` (see :class:`caterva2.replica.Space`),
        evicting least recently used replicas if needed; CacheTooSmall if even that is not
        enough."""
        self._reserve(replica.file.parent, nbytes)

    def _reserve(self, directory: pathlib.Path, nbytes: int) -> None:
        with self.lock:
            if self.limit is not None and self.usage() + nbytes > self.limit:
                self._evict(self.usage() + nbytes - self.limit, keep=directory)
                if self.usage() + nbytes > self.limit:
                    raise CacheTooSmall(self._too_small(nbytes))
            self.reserved += nbytes

    def settle(self, replica: SparseReplica, nbytes: int) -> None:
        """A write is over: its reservation ends, and its directory counts what it holds."""
        self._settle(replica.file.parent, nbytes)

    def _settle(self, directory: pathlib.Path, nbytes: int) -> None:
        if self.limit is None:  # nothing to keep under: no measuring (syscalls, GIL hand-offs)
            with self.lock:
                self.reserved -= nbytes
            return
        with self.lock:  # (measured under it: a size measured before another writer's
            self.reserved -= nbytes  # would undercount)
            self._set_size(directory, _dir_bytes(directory))
            if directory in self.sizes:
                self.sizes.move_to_end(directory)
            if self.limit is not None and self.usage() > self.limit:
                # (a chunk index grew more than foreseen, or the bound was lowered)
                self._evict(self.usage() - self.limit, keep=directory)

    def _evict(self, nbytes: int, keep: pathlib.Path) -> int:
        """Remove replicas nobody uses, least recently used first, until ``nbytes`` are
        freed (or none is left); returns the bytes freed."""
        by_dir = {self._replica_dir(k): (k, r) for k, r in self.replicas.items()}
        freed = 0
        for directory in list(self.sizes):
            if freed >= nbytes:
                break
            if directory == keep:
                continue
            key, replica = by_dir.get(directory, (None, None))
            if replica is not None:
                with self._lease_lock:
                    if replica in self._users:
                        continue  # an answer in flight uses it
                self._retire(key)  # type: ignore[arg-type]
            size = self.sizes.get(directory, 0)
            self._remove_dir(directory)
            freed += size
            log.info("evicted %s (%s) to keep the cache within %s",
                     directory.relative_to(self.directory), format_size(size),
                     format_size(self.limit))
            if self.on_evict is not None:
                self.on_evict(size)
        return freed

    def _too_small(self, nbytes: int) -> str:
        assert self.limit is not None
        with self._lease_lock:
            in_use = sum(self.sizes.get(r.file.parent, 0) for r in self._users)
        return (f"its cache is too small for this read: it needs {format_size(nbytes)} "
                f"more, and of its limit of {format_size(self.limit)} (cat2sub "
                f"--cache-size), {format_size(in_use)} hold data that this and other answers "
                "in flight are using; read a smaller selection, or give the cache more room")

    def _set_index_size(self, root: str, size: int) -> None:
        self._index_total += size - self.index_bytes.get(root, 0)
        self.index_bytes[root] = size

    def _set_size(self, directory: pathlib.Path, size: int) -> None:
        self._data_bytes += size - self.sizes.pop(directory, 0)
        if size:
            self.sizes[directory] = size

    def _remove_dir(self, directory: pathlib.Path) -> None:
        _trash(directory, self.directory)
        self._set_size(directory, 0)

    def _scan(self) -> None:
        """Find what the cache holds (at start): replicas, least recently written first,
        and indexes; clear what a crash left behind, and keep within the bound."""
        shutil.rmtree(self.directory / ".trash", ignore_errors=True)
        found = []
        for root_dir in sorted((self.directory / "roots").glob("*")):
            with contextlib.suppress(OSError):
                self._set_index_size(root_dir.name,
                                     _blocks((root_dir / "index.json").stat().st_size))
            for parent, _, files in os.walk(root_dir / "data"):
                for name in files:
                    if name.startswith((".new-", ".probe-")):  # (a crash mid-write)
                        (pathlib.Path(parent) / name).unlink(missing_ok=True)
                if REPLICA_FILE in files:
                    directory = pathlib.Path(parent)
                    with contextlib.suppress(OSError):
                        mtime = (directory / REPLICA_FILE).stat().st_mtime
                        found.append((mtime, str(directory), directory))
        for _, _, directory in sorted(found):
            self._set_size(directory, _dir_bytes(directory))
        log.info("cache: %d replicas, %s, limit %s", len(self.sizes),
                 format_size(self.usage()), format_size(self.limit))
        if self.limit is not None and self.usage() > self.limit:
            self._evict(self.usage() - self.limit, keep=self.directory)


def _nchunks(replica: SparseReplica) -> int:
    return replica.meta.schunk.nchunks


def _blocks(size: int) -> int:
    """``size`` in whole blocks, as a filesystem takes it."""
    return -(-size // BLOCK) * BLOCK


def _dir_bytes(directory: pathlib.Path) -> int:
    """What the files of a replica directory take on disk (the replica and what lies beside
    it), as the filesystem counts it: sparse files (digests, chunks held in part) take only
    the room of what was written into them."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


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
