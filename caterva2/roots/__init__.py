"""Sources of published data: a root is anything that implements :class:`PublishedRoot`."""
from .base import DatasetNotFound, DatasetUnavailable, PublishedRoot, VersionMismatch

__all__ = ["DatasetNotFound", "DatasetUnavailable", "PublishedRoot", "VersionMismatch",
           "open_root"]


def open_root(source: str, statedir: str) -> PublishedRoot:
    """The right kind of root for ``source``: a directory, or an HDF5 file."""
    import pathlib

    path = pathlib.Path(source)
    if path.is_dir():
        from .directory import DirectoryRoot
        return DirectoryRoot(path, statedir)
    if path.is_file():
        from .hdf5_file import HDF5Root  # needs the 'hdf5' extra
        return HDF5Root(path, statedir)
    raise FileNotFoundError(f"root {source!r} is neither a directory nor a file")
