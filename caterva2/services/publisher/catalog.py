"""The root's datasets as the publisher's endpoints serve them: typed entries, the HTTP
error for each way a dataset can be out of reach, and the index with its ETag."""
from __future__ import annotations

import hashlib
import json

from fastapi import HTTPException

from caterva2.models import AnyMeta, DatasetEntry, RootIndex
from caterva2.roots import DatasetNotFound, DatasetUnavailable, PublishedRoot


def entry_json(entry: DatasetEntry) -> bytes:
    """An entry as JSON: ``{"version", "meta"}``, and ``"error"`` only when it has one
    (as publishers always sent them)."""
    return entry.model_dump_json(exclude={"error"} if entry.error is None else None).encode()


class Catalog:
    """One root published under ``name``: what the endpoints ask of it.

    Methods that read the root block (call them in a thread).
    """

    def __init__(self, name: str, root: PublishedRoot):
        self.name, self.root = name, root
        self._index: tuple[str, bytes] | None = None  # the last complete index and its ETag

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
