"""The small interface every published root implements."""
from __future__ import annotations

import abc
import os
import pathlib
from collections.abc import AsyncIterator

from caterva2.models import DatasetEntry
from caterva2.provenance import Hop

BlockPieces = tuple[list[tuple[int, bytes]], int]  # (offset, bytes) pieces, chunk digest


class DatasetNotFound(KeyError):
    """No dataset at that path in this root."""

    def __str__(self) -> str:
        return f"no dataset {self.args[0]!r} in this root"


class DatasetUnavailable(Exception):
    """The dataset exists but cannot be read now (being written, or not valid Blosc2).

    ``version`` is the version tag of the file that could not be read, when known.
    """

    def __init__(self, message: str, version: str | None = None):
        super().__init__(message)
        self.version = version

    def entry(self) -> DatasetEntry:
        """The dataset's entry without metadata: listed, but not readable (see models)."""
        return DatasetEntry.unreadable(self.version or "unreadable", str(self))


def without_paths(error: Exception, *places: pathlib.Path) -> str:
    """The text of ``error`` with the server's directories ``places`` left out of the file
    paths in it (Blosc2 and HDF5 name files by their absolute paths): errors go to clients."""
    text = str(error)
    for place in places:
        text = text.replace(f"{pathlib.Path(place).resolve()}{os.sep}", "")
    return text


class SourceUnreachable(DatasetUnavailable):
    """A re-published root's upstream cannot be reached, or cannot give the data now."""


class VersionMismatch(Exception):
    """The dataset changed: the version asked for is not the current one."""


class PublishedRoot(abc.ABC):
    """A named group of datasets that a publisher serves.

    Paths are relative to the root, with ``/`` separators; ordinary files keep their own
    name (``README.md``), although they are served as Blosc2 SChunks.
    """

    @abc.abstractmethod
    def versions(self) -> dict[str, str]:
        """Every dataset path and its version tag, cheaply (no data read).

        A version tag changes whenever the dataset's content may have changed.
        """

    @abc.abstractmethod
    def entry(self, path: str) -> DatasetEntry:
        """One dataset's version tag and metadata (see :class:`caterva2.models.DatasetEntry`).

        Raises DatasetNotFound or DatasetUnavailable (with the version it could not read).
        """

    @abc.abstractmethod
    def read_chunk(self, path: str, nchunk: int, version: str | None = None) -> bytes:
        """Chunk ``nchunk`` exactly as stored.

        With ``version``, raises VersionMismatch unless that is still the current version.
        """

    def read_chunks(self, path: str, nchunks: list[int],
                    version: str | None = None) -> list[bytes]:
        """Several chunks of one version at once (roots may do this more cheaply)."""
        return [self.read_chunk(path, n, version) for n in nchunks]

    def chunk_sizes(self, path: str, nchunks: list[int], version: str) -> list[int] | None:
        """The stored sizes of ``nchunks`` (for a Content-Length), or None if not known cheaply."""
        return None

    @abc.abstractmethod
    def changes(self) -> AsyncIterator[None]:
        """Yield each time datasets of the root may have changed (then call versions())."""

    #: Whether chunk digests of a whole version can be had cheaply (by reading its stored
    #: chunks once): they let subscribers keep unchanged chunks when a dataset changes.
    offers_digests = True

    #: Whether :meth:`read_blocks` reads blocks of a chunk without the whole chunk.
    reads_blocks = False

    def read_blocks(self, path: str, nchunk: int, blocks: list[int],
                    version: str) -> BlockPieces:
        """Blocks ``blocks`` of chunk ``nchunk`` of an array: the ``(offset, bytes)``
        pieces of the chunk to send (its head, then each block; or the whole chunk if its
        blocks cannot move alone, see :func:`caterva2.blocks.pieces_to_send`) and the
        whole chunk's digest.  Only for roots with ``reads_blocks``."""
        raise NotImplementedError

    def known_digests(self, path: str, version: str) -> bytes | None:
        """The digests of every chunk of ``version`` if the root knows them without reading
        its chunks (a re-published root asks upstream); None: read the chunks."""
        return None

    def hops(self) -> list[Hop]:
        """Where the root's data comes from, nearest first (see :mod:`caterva2.provenance`):
        none for a root that is its own origin."""
        return []

    def stored_file(self, path: str) -> pathlib.Path | None:
        """A file holding the whole dataset as stored, if the root has one (for downloads)."""
        return None

    def download_url(self, path: str) -> str | None:
        """Where the whole dataset's file is served upstream, if the root is served from
        elsewhere (a re-published root): downloads are passed on from there."""
        return None

    #: Headers that reading :meth:`download_url` needs (a key upstream).
    upstream_headers: dict[str, str] = {}

    def close(self) -> None:
        """Release open handles."""
