"""What can keep a subscriber from getting data: each becomes a fitting HTTP answer."""
from __future__ import annotations


class Unavailable(Exception):
    """The data is not cached and its publisher cannot provide it now (→ 503, or 504 when
    the publisher did not answer in time)."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


class Gone(Exception):
    """The dataset no longer exists at its publisher (→ 404)."""


class Stale(Exception):
    """The dataset changed at the publisher while we were fetching it (→ read it again)."""
