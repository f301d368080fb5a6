"""The web interface in a real browser: headless Chromium, driven by Playwright, clicks
through the pages as a person would (open ``/``, subscribe, search, open a 3-D dataset,
move a slider and see the image change, read a table, download; log in and out).

The system's Chromium is used (see :mod:`caterva2.tests.browser`); without one, or
without Playwright, these tests are skipped and say why.
"""
from __future__ import annotations

import re

import blosc2
import httpx
import numpy as np
import pytest

from caterva2.tests import browser
from caterva2.tests.harness import Stack, cat2admin
from caterva2.tools import make_root_example

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="no Playwright: pip install 'caterva2[tests]'")
if browser.chromium_path() is None:
    pytest.skip(browser.NO_BROWSER, allow_module_level=True)

WAIT_MS = 20_000  # longest wait for anything on a page


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Root ``foo`` (the example root and :func:`ball`), an open subscriber not subscribed to it, and one
    that requires logins, and the API key of its user ``alice``."""
    base = tmp_path_factory.mktemp("browser")
    source = make_root_example.make(base / "root-example")
    blosc2.asarray(ball(), urlpath=str(source / "dir1" / "ball.b2nd"), mode="w",
                   chunks=(2, 16, 16))
    stack = Stack(base / "state")
    try:
        foo = stack.publish_root("foo", source)
        locked = stack.subscriber("locked", ["--require-login"])
        done = cat2admin("--statedir", locked.statedir, "adduser", "alice")
        assert done.returncode == 0, done.stderr
        yield foo, locked, done.stdout.strip().splitlines()[-1]
    finally:
        stack.stop()


def ball() -> np.ndarray:
    """A 3-D array whose planes along axis 0 differ in shape, not only in their values:
    slices of a ball (as in tomography)."""
    z, y, x = np.mgrid[-1:1:5j, -1:1:32j, -1:1:32j]
    return (z ** 2 + y ** 2 + x ** 2 <= 0.8).astype(np.float32)


@pytest.fixture(scope="module")
def chromium():
    with sync_api.sync_playwright() as playwright:
        instance = browser.launch(playwright)
        yield instance
        instance.close()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    yield context.new_page()
    context.close()


def test_subscribe_search_and_look_at_a_3d_dataset(deployment, page):
    foo, _, _ = deployment
    base = f"http://{foo.host}"
    page.goto(base + "/")
    card = page.locator('section[data-root="foo"]')
    sync_api.expect(card.locator(".badge")).to_have_text("not subscribed")
    card.get_by_role("button", name="Subscribe").click()
    sync_api.expect(card.locator(".badge").first).to_have_text("subscribed")
    sync_api.expect(card.locator(".count")).to_have_text("10 datasets")

    card.get_by_role("searchbox").fill("BALL")
    sync_api.expect(card.locator(".count")).to_contain_text("1 dataset matching")
    sync_api.expect(card.locator("ul.datasets li")).to_have_count(1)
    card.get_by_role("link", name="dir1/ball.b2nd").click()
    page.wait_for_url(re.compile(r"/roots/foo/dir1/ball\.b2nd$"))
    sync_api.expect(page.locator("h1")).to_have_text("dir1/ball.b2nd")
    sync_api.expect(page.locator(".facts")).to_contain_text("5 × 32 × 32")

    image = page.locator("#plane-image")
    before = image.get_attribute("src")
    slider = page.locator('input[type="range"][name="i0"]')
    assert slider.input_value() == "2"  # (the middle plane of 5)
    slider.focus()
    page.keyboard.press("ArrowRight")  # (as a person moving the slider does)
    sync_api.expect(page.locator("#i0 + output")).to_have_text("3")
    page.wait_for_function("before => document.getElementById('plane-image').src !== before",
                           arg=before)
    sync_api.expect(page.locator("#plane figcaption")).to_contain_text("axis 0 = 3")
    page.wait_for_url(re.compile(r"i0=3"))  # (the address follows: a link to share)

    page.get_by_label("Rows").select_option("0")  # (the plane of axes 0 and 2 now)
    sync_api.expect(page.locator('input[type="range"][name="i1"]')).to_have_count(1)
    sync_api.expect(page.locator("#plane figcaption")).to_contain_text("rows: axis 0")
    assert image.get_attribute("src") != before

    page.goto(f"{base}/roots/foo/dir1/ds-3d.b2nd")
    page.get_by_role("link", name="Data").click()
    page.get_by_label("Selection").fill("2, 1:3, ::2")
    page.get_by_role("button", name="Show").click()
    rows = page.locator("table.data tbody tr")
    sync_api.expect(rows).to_have_count(2)
    sync_api.expect(rows.nth(0)).to_have_text(re.compile(r"1\s*45\s*47\s*49"))
    cached = page.locator(".cached p").inner_text()
    assert re.search(r"Cached here: \d+ of 8 chunks", cached), cached


def test_bad_selection_shows_why(deployment, page):
    foo, _, _ = deployment
    page.goto(f"http://{foo.host}/roots/foo/ds-1d.b2nd?tab=data")
    page.get_by_label("Selection").fill("1:2:0")
    page.get_by_role("button", name="Show").click()
    sync_api.expect(page.locator(".error")).to_contain_text("400")
    sync_api.expect(page.locator(".error")).to_contain_text("zero")


def test_plot_and_markdown(deployment, page):
    foo, _, _ = deployment
    page.goto(f"http://{foo.host}/roots/foo/ds-1d-fields.b2nd")
    sync_api.expect(page.locator("figure.plot polyline")).to_have_count(1)
    page.get_by_label("Field").select_option("b")
    page.wait_for_url(re.compile(r"field=b"))
    sync_api.expect(page.locator("figure.plot figcaption")).to_contain_text("b by index")
    page.goto(f"http://{foo.host}/roots/foo/README.md")
    sync_api.expect(page.locator("article.markdown p")).to_contain_text(
        "This is a simple example")


def test_download(deployment, page, tmp_path):
    foo, _, _ = deployment
    page.goto(f"http://{foo.host}/roots/foo/README.md")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download").click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.name == "README.md"
    assert saved.read_bytes() == (foo.source / "README.md").read_bytes()

    page.goto(f"http://{foo.host}/roots/foo/dir1/ds-2d.b2nd")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download").click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.name == "ds-2d.b2nd"
    np.testing.assert_array_equal(blosc2.open(str(saved))[:],
                                  np.arange(200, dtype="uint16").reshape(10, 20))


def test_login_flow(deployment, page):
    _, locked, key = deployment
    base = f"http://{locked.address}"
    page.goto(base + "/roots/foo/ds-1d.b2nd")
    page.wait_for_url(re.compile(r"/web/login\?next="))
    page.get_by_label("User name").fill("alice")
    page.get_by_label("API key").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    sync_api.expect(page.locator(".error")).to_have_text("wrong user name or API key")

    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(base + "/roots/foo/ds-1d.b2nd")  # (back where it was going)
    sync_api.expect(page.locator(".error")).to_contain_text("not subscribed")
    sync_api.expect(page.locator(".who")).to_have_text("alice")
    cookie, = [c for c in page.context.cookies() if c["name"] == "caterva2_key"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    page.goto(base + "/")
    page.locator('section[data-root="foo"]').get_by_role("button", name="Subscribe").click()
    sync_api.expect(page.locator('section[data-root="foo"] .count')).to_have_text(
        "10 datasets")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/web/login$"))
    page.goto(base + "/")
    page.wait_for_url(re.compile(r"/web/login\?next=%2F$"))

    # API clients are refused as before, with or without a browser's cookie
    r = httpx.get(base + "/api/roots")
    assert r.status_code == 401 and "requires a login" in r.json()["detail"]
    r = httpx.get(base + "/api/roots", headers={"Cookie": f"caterva2_key={key}"})
    assert r.status_code == 200  # (the cookie is a login, whoever sends it)
    r = httpx.get(base + "/", headers={"Accept": "application/json"})
    assert r.status_code == 401
