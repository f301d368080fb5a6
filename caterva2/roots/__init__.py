"""Sources of published data: a root is anything that implements :class:`PublishedRoot`."""
from .base import (
    BlockPieces,
    DatasetNotFound,
    DatasetUnavailable,
    PublishedRoot,
    SourceUnreachable,
    VersionMismatch,
)

__all__ = ["BlockPieces", "DatasetNotFound", "DatasetUnavailable", "PublishedRoot", "SourceUnreachable",
           "VersionMismatch", "open_root"]


def open_root(source: str, statedir: str, *, name: str = "", own_id: str = "",
              api_key: str | None = None) -> PublishedRoot:
    """The right kind of root for ``source``: a root of another site's subscriber
    (``http(s)://HOST:PORT/ROOT``, re-published as ``name`` by the publisher ``own_id``,
    presenting ``api_key`` upstream), a directory, or an HDF5 file."""
    import pathlib

    if source.startswith(("http://", "https://")):
        from .relayed import RelayedRoot
        return RelayedRoot(source, name, statedir, own_id, api_key)
    path = pathlib.Path(source)
    if path.is_dir():
        from .directory import DirectoryRoot
        return DirectoryRoot(path, statedir)
    if path.is_file():
        from .hdf5_file import HDF5Root  # needs the 'hdf5' extra
        return HDF5Root(path, statedir)
    raise FileNotFoundError(f"root {source!r} is neither a directory nor a file (nor an "
                            "http(s)://HOST:PORT/ROOT of a subscriber)")
