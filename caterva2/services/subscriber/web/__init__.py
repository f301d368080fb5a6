"""The subscriber's web interface, for people with a browser (not part of the REST API,
nor of its OpenAPI schema).

- ``/``: the roots, subscribed or not, reachable or not, with a Subscribe button and a
  search over each subscribed root's dataset names (:mod:`.roots`);
- ``/roots/{root}/{path}``: the page of a dataset, to share: metadata, a view (plot,
  image, planes of N-D data, text), a table of any slice, what is cached, a download
  (:mod:`.dataset`);
- ``/web/login``, ``/web/logout``: logins, with ``cat2sub --require-login`` (:mod:`.login`);
- ``/web/static/``: the style sheet and htmx, so that nothing comes from elsewhere.

Pages are Jinja2 templates with htmx for the parts that change in place (search results,
subscriptions, the plane under the sliders); every page also works as plain links and
forms.  Data is read through the subscriber's own read path (:mod:`.reading`): what a page
shows is fetched on demand, cached and checked like any other read.
"""
from __future__ import annotations

from fastapi import FastAPI

from caterva2.services.subscriber.web import dataset, login, roots
from caterva2.services.subscriber.web.templating import STATIC_URL, static_files


def install(app: FastAPI) -> None:
    """Add the web interface's pages and assets to the subscriber's ``app``."""
    for module in (roots, dataset, login):
        app.include_router(module.router)
    app.mount(STATIC_URL, static_files(), name="web-static")
