"""What can keep a subscriber from getting data: each becomes a fitting HTTP answer."""
from __future__ import annotations

import http.client


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


def check_publisher_answer(response: http.client.HTTPResponse, root: str, path: str) -> None:
    """Raise what a publisher's answer to a data request means unless it is a 200: Stale
    (412: not our version; 503: being rewritten), Gone (404), else Unavailable with the
    publisher's words."""
    if response.status in (412, 503):
        raise Stale(path)
    if response.status == 404:
        raise Gone(path)
    if response.status != 200:
        raise Unavailable(f"publisher of {root!r} answered {response.status}: "
                          f"{response.read()[:200].decode(errors='replace')}")
