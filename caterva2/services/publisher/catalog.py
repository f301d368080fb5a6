"""The root's datasets as the publisher's endpoints serve them: typed entries, the HTTP
error for each way a dataset can be out of reach, and the index with its ETag."""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

import numpy as np
from fastapi import HTTPException

from caterva2 import wire
from caterva2.models import AnyMeta, DatasetEntry, RootIndex
from caterva2.roots import DatasetNotFound, DatasetUnavailable, PublishedRoot, VersionMismatch

DIGEST_BATCH = 16  # chunks read at once to digest a version
KEPT_DIGESTS = 256  # dataset versions whose digests are kept in memory


def entry_json(entry: DatasetEntry) -> bytes:
    """An entry as JSON: ``{"version", "meta"}``, and ``"error"`` only when it has one
    (as publishers always sent them)."""
    return entry.model_dump_json(exclude={"error"} if entry.error is None else None).encode()


class Catalog:
    """One root published under ``name``: what the endpoints ask of it.

    Methods that read the root block (call them in a thread).
    """

    def __init__(self, name: str, root: PublishedRoot, publisher_id: str | None = None):
        self.name, self.root, self.publisher_id = name, root, publisher_id
        self._index: tuple[str, bytes] | None = None  # the last complete index and its ETag
        self._digests: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._digests_lock = threading.Lock()  # (endpoints call in from several threads)

    def not_found(self, path: str) -> HTTPException:
        return HTTPException(404, f"no dataset {path!r} in root {self.name!r}")

    @staticmethod
    def not_current(path: str, version: str) -> HTTPException:
        return HTTPException(412, f"{path} changed: version {version} is not current")

    def entry_or_none(self, path: str) -> DatasetEntry | None:
        """The dataset's entry, without metadata if it cannot be read now; None if none."""
        try:
            return self.root.entry(path)
        except DatasetNotFound:
            return None
        except DatasetUnavailable as e:
            return e.entry()

    def entry(self, path: str) -> DatasetEntry:
        """The dataset's entry (maybe unreadable); 404 if there is no such dataset."""
        entry = self.entry_or_none(path)
        if entry is None:
            raise self.not_found(path)
        return entry

    def readable(self, path: str, version: str | None = None) -> tuple[str, AnyMeta]:
        """The dataset's current version and metadata; 412 if ``version`` is given and not
        current, 503 if the dataset cannot be read now."""
        entry = self.entry(path)
        if version is not None and version != entry.version:
            raise self.not_current(path, version)
        if entry.meta is None:
            raise HTTPException(503, f"dataset not readable now: {entry.error}")
        return entry.version, entry.meta

    def index(self) -> tuple[str, bytes]:
        """Every dataset's entry as the JSON of a :class:`caterva2.models.RootIndex`, and
        its ETag.  Kept while no version changes, unless some dataset was unreadable."""
        versions = self.root.versions()
        etag = hashlib.sha1(json.dumps(sorted(versions.items())).encode()).hexdigest()
        if self._index is not None and self._index[0] == etag:
            return self._index
        datasets = {}
        for path in sorted(versions):
            if (entry := self.entry_or_none(path)) is not None:  # (None: gone since the scan)
                datasets[path] = entry
        readable = {p: {"error"} for p, e in datasets.items() if e.error is None}
        body = RootIndex(datasets=datasets).model_dump_json(
            exclude={"datasets": readable}).encode()
        if len(readable) < len(datasets):
            return hashlib.sha1(body).hexdigest(), body  # not kept: read them again next time
        self._index = etag, body
        return self._index

    def digests(self, path: str, version: str | None = None) -> tuple[str, bytes]:
        """The current version of a dataset and its chunks' digests (little-endian u8 each,
        see :func:`caterva2.wire.chunk_digest`), read once per version; 404 if the root
        does not offer them, 412/503 as :meth:`readable`."""
        if not self.root.offers_digests:
            raise HTTPException(404, f"root {self.name!r} does not offer chunk digests")
        current, meta = self.readable(path, version)
        key = (path, current)
        with self._digests_lock:
            found = self._digests.get(key)
            if found is not None:
                self._digests.move_to_end(key)
                return current, found
        try:
            known = self.root.known_digests(path, current)
        except VersionMismatch:
            raise self.not_current(path, current) from None
        if known is not None:
            return current, known
        digests = np.zeros(meta.schunk.nchunks, dtype="<u8")
        for batch in wire.batched(list(range(len(digests))), DIGEST_BATCH):
            try:
                chunks = self.root.read_chunks(path, batch, current)
            except VersionMismatch:
                raise self.not_current(path, current) from None
            digests[batch] = [wire.chunk_digest(chunk) for chunk in chunks]
        with self._digests_lock:
            self._digests[key] = found = digests.tobytes()
            while len(self._digests) > KEPT_DIGESTS:
                self._digests.popitem(last=False)
        return current, found
