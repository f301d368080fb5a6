"""Who may write to the broker: publishers with the broker's token (if it has one) and a
key of their own.

Every registration and event must come with

- ``Authorization: Bearer TOKEN`` when the broker was started with a token
  (``CATERVA2_BROKER_TOKEN``, or ``token`` in ``[broker]``); without a token the broker is
  open to every publisher that reaches it, and says so when it starts;
- ``Caterva2-Publisher-Key: KEY``, the publisher's own key, to which the broker binds the
  names it registers (see :mod:`.bindings`).

Either missing or wrong is a 401 that says which and how to fix it.  Reading (the roots,
the event stream) needs neither.
"""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from caterva2.config import BROKER_TOKEN_ENV
from caterva2.models import PUBLISHER_KEY_HEADER

MAX_KEY_LENGTH = 200


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="caterva2"'})


def check_token(request: Request, token: str | None) -> None:
    """A 401 unless the request carries ``token`` as a Bearer token (nothing to check
    without one)."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _unauthorized(f"this broker requires its token of publishers: give the "
                            f"publisher the broker's token ({BROKER_TOKEN_ENV}, or token "
                            "in [publisher])")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise _unauthorized(f"wrong broker token: {BROKER_TOKEN_ENV} (or token in "
                            "[publisher]) must be the broker's token")


async def authenticated_publisher(request: Request) -> str:
    """The key of the publisher making the request, once its broker token is checked."""
    check_token(request, request.app.state.token)
    key = request.headers.get(PUBLISHER_KEY_HEADER, "").strip()
    if not key:
        raise _unauthorized(f"no publisher key: a publisher sends its own key in the "
                            f"{PUBLISHER_KEY_HEADER} header (cat2pub does, from "
                            "STATEDIR/publisher.key)")
    if len(key) > MAX_KEY_LENGTH:
        raise _unauthorized(f"publisher key longer than {MAX_KEY_LENGTH} characters")
    return key


PublisherKey = Annotated[str, Depends(authenticated_publisher)]
