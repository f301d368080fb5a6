"""Logging in from a browser, on a subscriber started with ``--require-login``.

- ``GET /web/login?next=URL``: a form asking for a user name and API key (the key
  ``cat2admin adduser`` printed);
- ``POST /web/login``: checks them; if right, sets the key as an ``HttpOnly``,
  ``SameSite=Strict`` cookie (:data:`~caterva2.services.subscriber.access.LOGIN_COOKIE`,
  which the access middleware takes in place of ``Authorization: Bearer``) and goes on
  to ``next``;
- ``POST /web/logout``: forgets the cookie.

Browsers asking for a page without a login are sent to the form; API clients still get
a 401 (see :class:`~caterva2.services.subscriber.access.RequireLogin`).
"""
from __future__ import annotations

import urllib.parse

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

from caterva2.services.subscriber.access import LOGIN_COOKIE
from caterva2.services.subscriber.deps import Sub
from caterva2.services.subscriber.web.templating import WebRoute, render
from caterva2.users import UserError

router = APIRouter(include_in_schema=False, route_class=WebRoute)
MAX_FORM_BYTES = 8192  # a login form is far smaller


def safe_next(url: str | None) -> str:
    """Where to go after logging in: a path of this site only (never another site)."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    return url


@router.get("/web/login")
async def login_page(request: Request, sub: Sub, next: str = "/") -> Response:
    return render(request, "login.html", next=safe_next(next),
                  open=not sub.access.require_login)


@router.post("/web/login")
async def login(request: Request, sub: Sub) -> Response:
    form = await read_form(request)
    name, key = form.get("user", "").strip(), form.get("key", "").strip()
    target = safe_next(form.get("next"))
    if not sub.access.require_login:
        return RedirectResponse(target, status_code=303)
    try:
        user = sub.access.users.user_for(key) if key else None
    except UserError as e:
        raise HTTPException(503, f"this subscriber cannot check logins now: {e}") from None
    if user is None or user != name:
        return render(request, "login.html", status_code=401, next=target, open=False,
                      name=name, failed="wrong user name or API key")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(LOGIN_COOKIE, key, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.post("/web/logout")
async def logout() -> Response:
    response = RedirectResponse("/web/login", status_code=303)
    response.delete_cookie(LOGIN_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a URL-encoded form (413 if it is far larger than a login form)."""
    body = b""
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "this form is too large")
    fields = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
    return {k: v[0] for k, v in fields.items()}
