"""How endpoints reach the subscriber's parts: a FastAPI dependency on ``app.state``."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from caterva2.services.subscriber.node import Subscriber


async def get_subscriber(request: Request) -> Subscriber:
    # (async: a plain function would cost every request a hop to a worker thread)
    return request.app.state.subscriber


Sub = Annotated[Subscriber, Depends(get_subscriber)]
