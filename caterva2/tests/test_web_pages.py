"""The web interface over plain HTTP: pages and fragments, their error pages (4xx, HTML,
never a 500), a search over 10,000 datasets kept small, images downsampled, Markdown
rendered safely, and no web route in the OpenAPI schema.  (Clicking through them in a
real browser: ``test_web_browser.py``.)"""
from __future__ import annotations

import base64
import html
import io
import re

import blosc2
import httpx
import numpy as np
import pytest
from PIL import Image

import caterva2 as cat2
from caterva2.tests.harness import Stack, cat2admin, wait_until

NFILES = 10_000
EVIL_MARKDOWN = ("# Notes\n\n<script>alert('md')</script>\n\n<b>bold?</b>\n\n"
                 "[click](javascript:alert(1)) and *fine*\n")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A subscriber following root ``lab``: 10,000 small frames in ten directories, a
    text file, a Markdown file with HTML and a script in it, and a 2-D array too big to
    show whole."""
    base = tmp_path_factory.mktemp("web")
    root = base / "lab"
    frame = bytes(blosc2.SChunk(chunksize=64, data=b"a small frame").to_cframe())
    for i in range(NFILES):  # (written as bytes: far faster than making each one)
        folder = root / f"d{i // 1000}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.b2frame").write_bytes(frame)
    (root / "hello.txt").write_text("Hello, web!\n")
    (root / "notes.md").write_text(EVIL_MARKDOWN)
    big = np.arange(2400 * 1800, dtype=np.uint16).reshape(2400, 1800)
    blosc2.asarray(big, urlpath=str(root / "big.b2nd"), mode="w", chunks=(600, 600))
    stack = Stack(base / "state")
    try:
        published = stack.publish_root("lab", root)
        cat2.subscribe("lab", published.host)
        yield f"http://{published.host}"
    finally:
        stack.stop()


def html_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("text/html"), response.headers
    assert words in html.unescape(response.text), response.text[-800:]
    assert "Traceback" not in response.text


def test_roots_page(sub_host):
    r = httpx.get(f"http://{sub_host}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'data-root="foo"' in r.text and "subscribed" in r.text
    assert "/roots/foo/dir1/ds-3d.b2nd" in r.text


def test_every_asset_is_served_here(sub_host):
    page = httpx.get(f"http://{sub_host}/roots/foo/dir1/ds-2d.b2nd").text
    assets = re.findall(r'(?:src|href)="(/web/static/[^"]+)"', page)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"htmx.min.js", "style.css"}
    for asset in assets:
        assert httpx.get(f"http://{sub_host}{asset}").status_code == 200, asset
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page)


@pytest.mark.parametrize("path", [
    "README.md", "ds-hello.b2frame", "ds-1d.b2nd", "ds-1d-b.b2nd", "ds-1d-fields.b2nd",
    "ds-sc-attr.b2nd", "dir1/ds-2d.b2nd", "dir1/ds-3d.b2nd", "dir2/ds-4d.b2nd"])
def test_every_tab_of_every_example_dataset(sub_host, path):
    kind_tabs = ["view", "meta"] + (["data"] if path.endswith(".b2nd") else [])
    for tab in kind_tabs:
        r = httpx.get(f"http://{sub_host}/roots/foo/{path}", params={"tab": tab})
        assert r.status_code == 200, (path, tab, r.text[:500])
        assert "Cached here" in r.text and 'id="download"' in r.text


def test_dataset_page_shows_metadata_and_attributes(sub_host):
    r = httpx.get(f"http://{sub_host}/roots/foo/ds-sc-attr.b2nd", params={"tab": "meta"})
    for words in ("cratio", "codec", "<th>a</th>", "123.456", "&#34;foo&#34;"):
        assert words in r.text, words
    r = httpx.get(f"http://{sub_host}/roots/foo/dir1/ds-3d.b2nd")
    assert "3 × 4 × 5" in r.text and "float32" in r.text and "2 × 3 × 4" in r.text


def test_data_tab_tables(sub_host):
    r = httpx.get(f"http://{sub_host}/roots/foo/ds-1d-fields.b2nd",
                  params={"tab": "data", "slice_": "10:15"})
    assert "<th>a</th><th>b</th>" in r.text  # (a column per field)
    rows = re.findall(r"<tr><th>(\d+)</th><td>(\d+)</td>", r.text)
    assert rows == [(str(i), str(i)) for i in range(10, 15)]
    r = httpx.get(f"http://{sub_host}/roots/foo/dir1/ds-2d.b2nd",
                  params={"tab": "data", "slice_": "1:3, ::5"})
    assert re.findall(r"<tr><th>(\d+)</th>((?:<td>\d+</td>)+)", r.text) == [
        ("1", "<td>20</td><td>25</td><td>30</td><td>35</td>"),
        ("2", "<td>40</td><td>45</td><td>50</td><td>55</td>")]


def test_text_and_cached_figures(sub_host):
    r = httpx.get(f"http://{sub_host}/roots/foo/README.md")
    assert "<p>This is a simple example,\nwith several lines,\nfor showing purposes.</p>" \
        in r.text
    r = httpx.get(f"http://{sub_host}/roots/foo/ds-hello.b2frame")
    assert "Hello world!Hello world!" in r.text
    held = re.search(r"Cached here:</strong> (\d+) of (\d+) chunks", r.text)
    assert held and held.group(1) == held.group(2)  # (the page read all of it)


@pytest.mark.parametrize("url, status, words", [
    ("/roots/nope/x.b2nd", 404, "no root named"),
    ("/roots/foo/nope.b2nd", 404, "no dataset"),
    ("/roots/foo/%2e%2e/%2e%2e/etc/passwd", 400, "'..'"),
    ("/roots/foo/ds-1d.b2nd?tab=bogus", 400, "no tab"),
    ("/roots/foo/README.md?tab=data", 400, "no tab"),
    ("/roots/foo/ds-1d.b2nd?tab=data&slice_=1:2:3:4", 400, "malformed"),
    ("/roots/foo/ds-1d.b2nd?tab=data&slice_=abc", 400, "malformed"),
    ("/roots/foo/ds-1d.b2nd?tab=data&slice_=::0", 400, "zero"),
    ("/roots/foo/ds-1d.b2nd?tab=data&slice_=5000", 400, "out of range"),
    ("/roots/foo/dir1/ds-3d.b2nd?tab=data&slice_=...", 400, "at most 2 dimensions"),
    ("/roots/foo/dir1/ds-3d.b2nd?i0=3", 400, "out of range"),
    ("/roots/foo/dir1/ds-3d.b2nd?i0=-1", 400, "out of range"),
    ("/roots/foo/dir1/ds-3d.b2nd?i0=one", 400, "must be an integer"),
    ("/roots/foo/dir1/ds-3d.b2nd?y=2&x=2", 400, "two different axes"),
    ("/roots/foo/dir1/ds-3d.b2nd?y=5", 400, "out of range"),
    ("/roots/foo/dir1/ds-3d.b2nd?cmap=nope", 400, "unknown colormap"),
    ("/web/plane/foo/dir1/ds-3d.b2nd?i0=7", 400, "out of range"),
    ("/web/plane/foo/ds-1d.b2nd", 400, "at least 2 dimensions"),
    ("/web/plane/foo/README.md", 400, "not an array"),
    ("/roots/foo/ds-1d-fields.b2nd?field=zz", 400, "no numeric field"),
    ("/web/search/nope", 404, "no root named"),
    ("/web/search/foo?page=-1", 400, "page"),
    ("/web/search/foo?page=x", 400, "page"),
    ("/web/subscribe/nope", 404, "no root named"),
    ("/web/download/foo/ds-1d.b2nd", 400, "Blosc2 dataset"),
])
def test_bad_input_gets_an_error_page(sub_host, url, status, words):
    method = "POST" if url.startswith("/web/subscribe") else "GET"
    html_error(httpx.request(method, f"http://{sub_host}{url}"), status, words)


def test_too_large_a_table_is_refused(lab):
    html_error(httpx.get(f"{lab}/roots/lab/big.b2nd", params={"tab": "data",
                                                             "slice_": ":, :"}),
               400, "has 4320000 cells, and a table shows at most 10000")
    r = httpx.get(f"{lab}/roots/lab/big.b2nd", params={"tab": "data", "slice_": "0:100, :100"})
    table = r.text.split('<table class="data">')[1]
    assert r.status_code == 200 and table.count("<td>") == 10_000


def test_htmx_errors_are_fragments(sub_host):
    r = httpx.get(f"http://{sub_host}/web/plane/foo/dir1/ds-3d.b2nd?i0=9",
                  headers={"HX-Request": "true"})
    html_error(r, 400, "out of range")
    assert "<html" not in r.text and 'class="error"' in r.text


def test_plane_fragment_says_where_to_share(sub_host):
    r = httpx.get(f"http://{sub_host}/web/plane/foo/dir1/ds-3d.b2nd",
                  params={"i0": 2, "cmap": "gray"}, headers={"HX-Request": "true"})
    assert r.status_code == 200 and "<img" in r.text
    assert r.headers["hx-replace-url"].startswith("/roots/foo/dir1/ds-3d.b2nd?tab=view")
    assert "i0=2" in r.headers["hx-replace-url"]


def test_pages_forbid_scripts_from_elsewhere(sub_host):
    r = httpx.get(f"http://{sub_host}/roots/foo/README.md")
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert not re.search(r"<[^>]*\son[a-z]+=", r.text), "inline event handler"
    assert not re.search(r"<script>[^<]", r.text), "inline script"


def test_web_routes_are_not_in_the_api_schema(sub_host):
    paths = httpx.get(f"http://{sub_host}/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith(("/roots", "/web"))], list(paths)


def test_search_of_10000_datasets_is_paged(lab):
    r = httpx.get(f"{lab}/")
    assert r.status_code == 200 and "10003 datasets" in r.text
    assert r.text.count('<li><a href="/roots/lab/') == 50
    assert len(r.content) < 20_000
    r = httpx.get(f"{lab}/web/search/lab", params={"q": "F0999"})  # (any case)
    assert "10 datasets matching" in r.text  # f09990..f09999
    assert r.text.count("<li>") == 10
    r = httpx.get(f"{lab}/web/search/lab", params={"q": "", "page": 200})
    assert "page 201 of 201" in r.text and r.text.count("<li>") == 3
    assert len(r.content) < 2_000
    r = httpx.get(f"{lab}/web/search/lab", params={"q": "d3/", "page": 1})
    assert "1000 datasets" in r.text and r.text.count("<li>") == 50
    assert "d3/f03050.b2frame" in r.text and "next" in r.text and "previous" in r.text


def test_a_large_plane_is_shown_downsampled(lab):
    r = httpx.get(f"{lab}/roots/lab/big.b2nd")
    assert r.status_code == 200
    src = re.search(r'src="data:image/png;base64,([^"]+)"', r.text).group(1)
    image = Image.open(io.BytesIO(base64.b64decode(src)))
    assert image.size == (600, 600)  # (1800 / 3 columns, 2400 / 4 rows)
    assert "one row in 4 and one column in 3 shown" in r.text


def test_markdown_is_rendered_without_its_html(lab):
    r = httpx.get(f"{lab}/roots/lab/notes.md")
    assert "<h1>Notes</h1>" in r.text and "<em>fine</em>" in r.text
    assert "<script>alert" not in r.text and "<b>bold" not in r.text
    assert "&lt;script&gt;alert" in r.text
    assert 'href="javascript:' not in r.text


def test_ordinary_files_download_as_published(lab):
    r = httpx.get(f"{lab}/roots/lab/hello.txt")
    assert "Hello, web!" in r.text and 'href="/web/download/lab/hello.txt"' in r.text
    r = httpx.get(f"{lab}/web/download/lab/hello.txt")
    assert r.status_code == 200 and r.content == b"Hello, web!\n"
    assert "hello.txt" in r.headers["content-disposition"]
    r = httpx.get(f"{lab}/roots/lab/d4/f04321.b2frame")
    assert "a small frame" in r.text and 'href="/files/lab/d4/f04321.b2frame"' in r.text


def test_pages_show_only_what_the_user_may_see(stack, tmp_path, example_dir):
    """With logins required and per-root rules, a browser logs in with its user name and
    key (kept in an HttpOnly, SameSite=Strict cookie), sees only the roots it may, and
    is refused the others' pages; API clients still get 401s."""
    stack.publisher("foo", example_dir)
    stack.publisher("secret", example_dir)
    conf = tmp_path / "caterva2.toml"
    conf.write_text('[access.secret]\nread = ["bob"]\nsubscribe = ["bob"]\n')
    sub = stack.subscriber(args=["--conf", str(conf), "--require-login"])
    keys = {}
    for name in ("alice", "bob"):
        done = cat2admin("--statedir", sub.statedir, "adduser", name)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.strip().splitlines()[-1]
    base = f"http://{sub.address}"
    with cat2.Client(base, api_key=keys["bob"]) as bob_api:
        wait_until(lambda: "secret" in bob_api.roots(), what="root secret at the subscriber")
        bob_api.subscribe("secret")

    r = httpx.get(base + "/roots/secret/ds-1d.b2nd", headers={"Accept": "text/html"})
    assert r.status_code == 303
    assert r.headers["location"] == "/web/login?next=%2Froots%2Fsecret%2Fds-1d.b2nd"
    r = httpx.get(base + "/web/search/secret", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.headers["hx-redirect"].startswith("/web/login?next=")
    assert httpx.get(base + "/").status_code == 401  # (not a browser: as before)
    assert httpx.get(base + "/web/static/style.css").status_code == 200  # (login page's)
    r = httpx.get(base + "/web/login")
    assert r.status_code == 200 and 'name="key"' in r.text

    def login(user: str, key: str, next_: str = "/") -> httpx.Response:
        return httpx.post(base + "/web/login", data={"user": user, "key": key,
                                                     "next": next_})

    html_error(login("alice", keys["bob"]), 401, "wrong user name or API key")
    html_error(login("alice", "nope"), 401, "wrong user name or API key")
    r = login("alice", keys["alice"], "//elsewhere.example/")
    assert r.status_code == 303 and r.headers["location"] == "/"  # (this site only)
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("caterva2_key=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie

    with httpx.Client(base_url=base, cookies=r.cookies) as alice:
        page = alice.get("/")
        assert page.status_code == 200 and 'data-root="foo"' in page.text
        assert "secret" not in page.text and ">alice<" in page.text
        html_error(alice.get("/roots/secret/ds-1d.b2nd"), 403, "may not read root 'secret'")
        html_error(alice.post("/web/subscribe/secret"), 403, "may not subscribe")
        r = alice.post("/web/subscribe/secret", headers={"HX-Request": "true"})
        html_error(r, 403, "may not subscribe")
        assert 'class="root card"' in r.text  # (the card stays, saying why)
        r = alice.post("/web/logout")
        assert r.status_code == 303 and 'caterva2_key=""' in r.headers["set-cookie"]
    with httpx.Client(base_url=base, cookies=login("bob", keys["bob"]).cookies) as bob:
        page = bob.get("/")
        assert 'data-root="secret"' in page.text and "/roots/secret/ds-1d.b2nd" in page.text
        assert bob.get("/roots/secret/ds-1d.b2nd").status_code == 200


def test_data_out_of_reach_still_shows_what_is_known(stack, example_dir):
    """With its publisher gone, a dataset not cached still has its page: metadata, what
    is cached (nothing), and why its data cannot be shown (a 503)."""
    foo = stack.publish_root("foo", example_dir)
    cat2.subscribe("foo", foo.host)
    base = f"http://{foo.host}/roots/foo"
    assert httpx.get(f"{base}/ds-1d.b2nd").status_code == 200  # (cached now)
    foo.publisher.stop()
    r = httpx.get(f"{base}/dir1/ds-2d.b2nd")
    html_error(r, 503, "Not available now")
    assert "10 × 20" in r.text and "Cached here:</strong> 0 of" in r.text
    r = httpx.get(f"{base}/ds-1d.b2nd", params={"tab": "data", "slice_": "5:8"})
    assert r.status_code == 200 and "<td>7</td>" in r.text  # (from the cache)
