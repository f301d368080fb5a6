"""Clients that users already have, unchanged, against our subscriber.

Three generations of other clients read from a subscriber (see
:mod:`caterva2.services.subscriber.compat`), each tested from its own virtual environment,
as released on the package registry:

- the current upstream Caterva2 client (``caterva2.Client(url)``, :data:`UPSTREAM`);
- Blosc2's remote arrays (``blosc2.C2Array``, with the Blosc2 that client brings);
- the released 0.2-era client (module functions, ``Root``/``Dataset``/``File``,
  :data:`RELEASED`).

The environments are made once and kept (in ``_caterva2_client_venvs``, or
``$CATERVA2_CLIENT_VENVS``; ``make clean`` removes them); when the package registry cannot
be reached, their tests are skipped, saying so.  Each test starts its own subscriber of a
root made here, runs a small script in the client's environment (``python -I``: nothing of
this checkout is importable there) that prints what each call gave as JSON, and compares
it with what NumPy and Blosc2 read from the root's files here.

The wire forms behind them (frames, buffers, chunks, coded downloads) are tested without
those environments too, on the session's subscriber.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.metadata import dtype_from_descr
from caterva2.tests.harness import Stack, wait_until

UPSTREAM = ("caterva2==2026.9.2",)  # the current upstream client; Blosc2 as it resolves
RELEASED = ("caterva2==0.2.0", "blosc2")  # 0.2 reads Blosc2 answers only if Blosc2 is there
VENVS = pathlib.Path(os.environ.get("CATERVA2_CLIENT_VENVS", "_caterva2_client_venvs"))
INSTALL_TIMEOUT_S = 600
SCRIPT_TIMEOUT_S = 180
# What pip says when it cannot reach the registry (or the registry has no such release)
UNREACHABLE = ("Could not find a version that satisfies", "No matching distribution found",
               "Failed to establish a new connection", "Max retries exceeded",
               "Temporary failure in name resolution", "Network is unreachable",
               "ConnectTimeout", "ProxyError", "Could not fetch URL")


# ---------------------------------------------------------------------------
# The clients' environments
# ---------------------------------------------------------------------------
def client_python(name: str, requirements: tuple[str, ...]) -> pathlib.Path:
    """The Python of a virtual environment holding ``requirements`` (made once, kept in
    VENVS/NAME); the test is skipped if the registry cannot be reached."""
    venv = VENVS / name
    marker = venv / "caterva2-requirements.txt"
    python = venv / "bin" / "python"
    wanted = "\n".join(requirements) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python.absolute()
    partial = VENVS / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True,
                   capture_output=True, timeout=INSTALL_TIMEOUT_S)
    done = subprocess.run([str(partial / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", *requirements],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        said = (done.stderr or done.stdout).strip()
        if any(words in said for words in UNREACHABLE):
            last = said.splitlines()[-1] if said else "no output"
            pytest.skip(f"cannot install {' '.join(requirements)} from the package registry "
                        f"(unreachable?): pip says: {last}")
        raise RuntimeError(f"pip could not install {' '.join(requirements)}:\n{said}")
    (partial / "caterva2-requirements.txt").write_text(wanted)
    shutil.rmtree(venv, ignore_errors=True)
    partial.rename(venv)
    return python.absolute()


@pytest.fixture(scope="session")
def upstream_python() -> pathlib.Path:
    return client_python("upstream-2026.9.2", UPSTREAM)


@pytest.fixture(scope="session")
def released_python() -> pathlib.Path:
    return client_python("released-0.2.0", RELEASED)


# ---------------------------------------------------------------------------
# The root they read, and subscribers of it
# ---------------------------------------------------------------------------
A = np.arange(30 * 40, dtype="float64").reshape(30, 40) / 4
B = (np.arange(30 * 40, dtype="float64") % 7).reshape(30, 40)
ND = np.arange(3 * 4 * 5 * 6, dtype="int32").reshape(3, 4, 5, 6)
REC = np.array([(i, i / 8) for i in range(50)], dtype=[("a", "<i4"), ("b", "<f8")])
BIG = np.arange(500 * 600, dtype="float64").reshape(500, 600)  # (a Proxy reads it by blocks)
HELLO = b"Hello world!" * 100
NOTES = "Measured on the 3rd of May.\nSecond line, with an accent: é.\nThird line.\n"


def make_root(directory: pathlib.Path) -> pathlib.Path:
    """A root with a 2-D array (with user attributes), another for expressions, a 4-D
    array, a structured one, a ``.b2frame``, a text file, and an array large enough for Blosc2 to try
    reading it by blocks."""
    (directory / "dir").mkdir(parents=True)
    a = blosc2.asarray(A, urlpath=str(directory / "a.b2nd"), mode="w",
                       chunks=(10, 15), blocks=(5, 5))
    a.vlmeta["unit"] = "kelvin"
    a.vlmeta["scale"] = 2
    blosc2.asarray(B, urlpath=str(directory / "b.b2nd"), mode="w", chunks=(10, 15),
                   blocks=(5, 5))
    blosc2.asarray(ND, urlpath=str(directory / "dir" / "nd.b2nd"), mode="w",
                   chunks=(2, 3, 3, 4), blocks=(1, 2, 2, 2))
    blosc2.asarray(REC, urlpath=str(directory / "rec.b2nd"), mode="w", chunks=(20,),
                   blocks=(5,))
    blosc2.asarray(BIG, urlpath=str(directory / "big.b2nd"), mode="w", chunks=(250, 300),
                   blocks=(50, 50))
    blosc2.SChunk(chunksize=100, data=HELLO, urlpath=str(directory / "hello.b2frame"),
                  mode="w")
    (directory / "notes.txt").write_text(NOTES, encoding="utf-8")
    return directory


class Published:
    """The root ``data``, published, and a new subscriber of it for each client."""

    def __init__(self, stack: Stack, root: pathlib.Path):
        self.stack, self.root = stack, root
        stack.publisher("data", root)

    def subscriber(self, name: str) -> str:
        """A new subscriber (nothing cached: every read goes to the publisher) that knows
        ``data``; its address."""
        service = self.stack.subscriber(name)
        wait_until(lambda: "data" in cat2.get_roots(service.address),
                   what="root data at the subscriber")
        return service.address

    def source_chunk(self, path: str, nchunk: int) -> bytes:
        return stored_chunk(self.root / path, nchunk)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Any:
    if os.environ.get("CATERVA2_USE_EXTERNAL") == "1":
        pytest.skip("needs its own services (CATERVA2_USE_EXTERNAL=1)")
    stack = Stack(tmp_path_factory.mktemp("compat-state"))
    try:
        yield Published(stack, make_root(tmp_path_factory.mktemp("compat-root")))
    finally:
        stack.stop()


# ---------------------------------------------------------------------------
# Running a client script
# ---------------------------------------------------------------------------
PRELUDE = '''
import base64, json, pathlib, sys
import numpy as np

results = {}

def encode(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (np.ndarray, np.generic)):
        a = np.asarray(value).copy(order="C")  # (0-d stays 0-d)
        return {"array": base64.b64encode(a.tobytes()).decode(), "shape": list(a.shape),
                "descr": np.lib.format.dtype_to_descr(a.dtype)}
    if isinstance(value, pathlib.PurePath):
        return {"path": str(value)}
    return {"json": value}

def check(name, call):
    try:
        results[name] = encode(call())
    except Exception as e:
        results[name] = {"error": f"{type(e).__name__}: {e}"}
'''


def run_client(python: pathlib.Path, script: str, cwd: pathlib.Path, *args: str
               ) -> dict[str, Any]:
    """What ``script`` (after :data:`PRELUDE`, with ``args`` in ``sys.argv``) recorded in
    ``results``, each call's value decoded; a call that raised is kept as its error."""
    code = PRELUDE + textwrap.dedent(script) + "\nprint(json.dumps(results))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CATERVA2_"))}
    done = subprocess.run([str(python), "-I", "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, f"the client script failed:\n{done.stderr}"
    return {name: decode(said) for name, said in json.loads(done.stdout.splitlines()[-1]).items()}


class CallFailed:
    """A call of the client script that raised."""

    def __init__(self, error: str):
        self.error = error

    def __repr__(self) -> str:
        return f"<the call raised {self.error}>"


def decode(said: dict[str, Any]) -> Any:
    if "error" in said:
        return CallFailed(said["error"])
    if "bytes" in said:
        return base64.b64decode(said["bytes"])
    if "array" in said:
        dtype = dtype_from_descr(said["descr"])
        return np.frombuffer(base64.b64decode(said["array"]), dtype).reshape(said["shape"])
    if "path" in said:
        return pathlib.Path(said["path"])
    return said["json"]


def assert_calls(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every call gave what was expected (arrays: same dtype, shape and values); all the
    differences are reported at once."""
    wrong = []
    for name, want in expected.items():
        value = got.get(name, CallFailed("not run"))
        if isinstance(want, np.ndarray):
            same = (isinstance(value, np.ndarray) and value.dtype == want.dtype
                    and value.shape == want.shape and np.array_equal(value, want))
        else:
            same = value == want
        if not same:
            wrong.append(f"{name}: got {value!r}\n    expected {want!r}")
    assert not wrong, "\n".join(wrong)


def stored_array(path: pathlib.Path) -> np.ndarray:
    return blosc2.open(str(path), mode="r")[()]


def stored_chunk(path: pathlib.Path, nchunk: int) -> bytes:
    """A chunk of a Blosc2 file, as stored (the opened object is kept while its chunk is
    read: its SChunk does not keep it alive)."""
    opened = blosc2.open(str(path), mode="r")
    return bytes(getattr(opened, "schunk", opened).get_chunk(nchunk))


# ---------------------------------------------------------------------------
# The current upstream client
# ---------------------------------------------------------------------------
UPSTREAM_SCRIPT = '''
import caterva2
client = caterva2.Client(sys.argv[1])
check("roots", lambda: sorted(client.get_roots()))
check("list", lambda: client.get_list("data"))
check("info", lambda: {k: client.get_info("data/a.b2nd")[k] for k in ("shape", "dtype", "chunks")})
check("vlmeta", lambda: client.get_info("data/a.b2nd")["schunk"]["vlmeta"])
check("fetch", lambda: client.fetch("data/a.b2nd", (slice(3, 17), slice(5, 33))))
check("fetch_whole", lambda: client.fetch("data/dir/nd.b2nd"))
check("get_slice", lambda: client.get_slice("data/a.b2nd", (slice(0, 12), slice(14, 16)))[:])
check("get_slice_kind", lambda: type(client.get_slice("data/a.b2nd", slice(0, 2))).__name__)
check("get_chunk", lambda: client.get_chunk("data/a.b2nd", 4))
check("get_chunk_frame", lambda: client.get_chunk("data/hello.b2frame", 2))
check("dataset_slice", lambda: client.get("data/a.b2nd")[2:5, 7])
check("dataset_item", lambda: client.get("data/a.b2nd")[4, 9])
check("dataset_nd", lambda: client.get("data")["dir/nd.b2nd"][1, 1:3, ..., 2:4])
check("dataset_props", lambda: [list(client.get("data/dir/nd.b2nd").shape),
                                client.get("data/dir/nd.b2nd").dtype])
check("records", lambda: client.get("data/rec.b2nd")[2:5])
check("field", lambda: client.get("data/rec.b2nd")["b"][:])
check("frame", lambda: client.fetch("data/hello.b2frame", slice(10, 250)))
check("frame_dataset", lambda: client.get("data/hello.b2frame")[0:12])
check("file", lambda: client.fetch("data/notes.txt"))
check("file_object", lambda: client.get("data/notes.txt")[5:20])
check("kinds", lambda: [type(client.get(f"data/{p}")).__name__
                        for p in ("a.b2nd", "hello.b2frame", "notes.txt")])
check("download", lambda: client.download("data/a.b2nd"))
check("download_frame", lambda: client.get("data/hello.b2frame").download())
check("download_file", lambda: client.download("data/notes.txt"))
check("download_to", lambda: client.download("data/dir/nd.b2nd", "nd-copy.b2nd"))
'''


def test_upstream_client(upstream_python, published, tmp_path):
    host = published.subscriber("sub-upstream")
    cat2.subscribe("data", host)  # (that client cannot: an operator subscribes for it)
    got = run_client(upstream_python, UPSTREAM_SCRIPT, tmp_path, f"http://{host}")
    assert_calls(got, {
        "roots": ["data"],
        "list": ["a.b2nd", "b.b2nd", "big.b2nd", "dir/nd.b2nd", "hello.b2frame", "notes.txt",
                 "rec.b2nd"],
        "info": {"shape": [30, 40], "dtype": "float64", "chunks": [10, 15]},
        "vlmeta": {"unit": "kelvin", "scale": 2},
        "fetch": A[3:17, 5:33], "fetch_whole": ND, "get_slice": A[0:12, 14:16],
        "get_slice_kind": "NDArray",
        "get_chunk": published.source_chunk("a.b2nd", 4),
        "get_chunk_frame": published.source_chunk("hello.b2frame", 2),
        "dataset_slice": A[2:5, 7], "dataset_item": np.asarray(A[4, 9]),
        "dataset_nd": ND[1, 1:3, ..., 2:4], "dataset_props": [[3, 4, 5, 6], "int32"],
        "records": REC[2:5], "field": REC["b"],
        "frame": HELLO[10:250], "frame_dataset": HELLO[:12],
        "file": NOTES.encode(), "file_object": NOTES.encode()[5:20],
        "kinds": ["Array", "Array", "File"],
        "download": pathlib.Path("data/a.b2nd"),
        "download_frame": pathlib.Path("data/hello.b2frame"),
        "download_file": pathlib.Path("data/notes.txt"),
        "download_to": pathlib.Path("nd-copy.b2nd"),
    })
    saved = blosc2.open(str(tmp_path / "data/a.b2nd"))
    assert np.array_equal(saved[()], A) and saved.schunk.vlmeta["unit"] == "kelvin"
    assert np.array_equal(stored_array(tmp_path / "nd-copy.b2nd"), ND)
    assert blosc2.open(str(tmp_path / "data/hello.b2frame"))[:] == HELLO
    assert (tmp_path / "data/notes.txt").read_bytes() == NOTES.encode()  # (unpacked)
    assert not list(tmp_path.rglob("*.b2")), "a packed download was left behind"


# ---------------------------------------------------------------------------
# Blosc2's remote arrays
# ---------------------------------------------------------------------------
C2ARRAY_SCRIPT = '''
import blosc2
urlbase = sys.argv[1] + "/"
a = blosc2.C2Array("data/a.b2nd", urlbase=urlbase)
b = blosc2.C2Array("data/b.b2nd", urlbase=urlbase)
nd = blosc2.C2Array("data/dir/nd.b2nd", urlbase=urlbase)
check("meta", lambda: [list(a.shape), str(a.dtype), list(a.chunks), list(a.blocks)])
check("slice", lambda: a[3:17, 5:33])
check("slice_ndarray", lambda: a.slice((slice(0, 4), slice(10, 20)))[:])
check("nd", lambda: nd[1:3, :, 2])
check("sum", lambda: (a + b).compute()[:])
check("lazyexpr", lambda: blosc2.lazyexpr("sin(a) * 2 + b", {"a": a, "b": b}).compute()[:])
check("lazy_slice", lambda: ((a - b) * 3)[2:6, 4:9])
check("lazy_reduction", lambda: (a * b).sum())
check("get_chunk", lambda: a.get_chunk(5))
check("get_chunk_nd", lambda: nd.get_chunk(0))
# (a Proxy first asks for byte ranges, which are refused: it then reads whole chunks)
big = blosc2.C2Array("data/big.b2nd", urlbase=urlbase)
check("proxy", lambda: blosc2.Proxy(big)[10:12, 290:310])
'''


def test_blosc2_remote_arrays(upstream_python, published, tmp_path):
    host = published.subscriber("sub-c2array")
    cat2.subscribe("data", host)
    got = run_client(upstream_python, C2ARRAY_SCRIPT, tmp_path, f"http://{host}")
    assert_calls(got, {
        "meta": [[30, 40], "float64", [10, 15], [5, 5]],
        "slice": A[3:17, 5:33], "slice_ndarray": A[0:4, 10:20], "nd": ND[1:3, :, 2],
        "sum": A + B, "lazyexpr": np.sin(A) * 2 + B, "lazy_slice": ((A - B) * 3)[2:6, 4:9],
        "lazy_reduction": np.asarray((A * B).sum()),
        "get_chunk": published.source_chunk("a.b2nd", 5),
        "get_chunk_nd": published.source_chunk("dir/nd.b2nd", 0),
        "proxy": BIG[10:12, 290:310],
    })


# ---------------------------------------------------------------------------
# The released 0.2-era client
# ---------------------------------------------------------------------------
RELEASED_SCRIPT = '''
import caterva2 as cat2
host = sys.argv[1]
check("version", lambda: cat2.__version__)
check("roots", lambda: sorted(cat2.get_roots(host)))
check("subscribe", lambda: cat2.subscribe("data", host))
check("list", lambda: cat2.get_list("data", host))
check("info", lambda: {k: cat2.get_info("data/a.b2nd", host)[k] for k in ("shape", "dtype")})
check("fetch", lambda: cat2.fetch("data/a.b2nd", host, "3:17, 5:33"))
check("fetch_frame", lambda: cat2.fetch("data/hello.b2frame", host, "10:250"))
check("fetch_file", lambda: cat2.fetch("data/notes.txt", host))
check("download", lambda: cat2.download("data/a.b2nd", host))
check("download_file", lambda: cat2.download("data/notes.txt", host))
root = cat2.Root("data", host=host)
check("node_list", lambda: root.node_list)
check("kinds", lambda: [type(root[p]).__name__ for p in ("a.b2nd", "hello.b2frame", "notes.txt")])
check("dataset_slice", lambda: root["a.b2nd"][3:17, 5:33])
check("dataset_row", lambda: root["a.b2nd"][4])
check("dataset_item", lambda: root["a.b2nd"][4, 9])
check("dataset_nd", lambda: root["dir/nd.b2nd"][1, 1:3])
check("dataset_fetch", lambda: root["a.b2nd"].fetch(slice(1, 3)))
check("records", lambda: root["rec.b2nd"][2:5])
check("meta", lambda: root["dir/nd.b2nd"].meta["shape"])
check("vlmeta", lambda: root["a.b2nd"].vlmeta)
check("frame_slice", lambda: root["hello.b2frame"][0:12])
check("file_slice", lambda: root["notes.txt"][5:20])
check("file_byte", lambda: root["notes.txt"][0])
check("download_url", lambda: root["notes.txt"].get_download_url())
check("dataset_download", lambda: root["dir/nd.b2nd"].download())
check("frame_download", lambda: root["hello.b2frame"].download())
'''


def test_released_client(released_python, published, tmp_path):
    host = published.subscriber("sub-released")
    got = run_client(released_python, RELEASED_SCRIPT, tmp_path, host)
    assert_calls(got, {
        "version": "0.2.0", "roots": ["data"], "subscribe": "Ok",
        "list": ["a.b2nd", "b.b2nd", "big.b2nd", "dir/nd.b2nd", "hello.b2frame", "notes.txt",
                 "rec.b2nd"],
        "info": {"shape": [30, 40], "dtype": "float64"},
        "fetch": A[3:17, 5:33], "fetch_frame": HELLO[10:250], "fetch_file": NOTES.encode(),
        "download": pathlib.Path("data/a.b2nd"), "download_file": pathlib.Path("data/notes.txt"),
        "node_list": ["a.b2nd", "b.b2nd", "big.b2nd", "dir/nd.b2nd", "hello.b2frame", "notes.txt",
                 "rec.b2nd"],
        "kinds": ["Dataset", "Dataset", "File"],
        "dataset_slice": A[3:17, 5:33], "dataset_row": A[4], "dataset_item": np.asarray(A[4, 9]),
        "dataset_nd": ND[1, 1:3], "dataset_fetch": A[1:3], "meta": [3, 4, 5, 6],
        "records": REC[2:5],
        "vlmeta": {"unit": "kelvin", "scale": 2},
        "frame_slice": HELLO[:12], "file_slice": NOTES.encode()[5:20],
        "file_byte": NOTES.encode()[:1],
        "download_url": f"http://{host}/files/data/notes.txt.b2",
        "dataset_download": pathlib.Path("data/dir/nd.b2nd"),
        "frame_download": pathlib.Path("data/hello.b2frame"),
    })
    assert np.array_equal(stored_array(tmp_path / "data/a.b2nd"), A)
    assert np.array_equal(stored_array(tmp_path / "data/dir/nd.b2nd"), ND)
    assert blosc2.open(str(tmp_path / "data/hello.b2frame"))[:] == HELLO
    assert (tmp_path / "data/notes.txt").read_bytes() == NOTES.encode()


# ---------------------------------------------------------------------------
# The wire forms behind them (no client environment needed)
# ---------------------------------------------------------------------------
def get(sub_host: str, path: str, **kwargs: Any) -> httpx.Response:
    r = httpx.get(f"http://{sub_host}{path}", timeout=30, **kwargs)
    return r


def test_bytes_selections_as_each_generation_reads_them(sub_host, example_dir):
    hello = blosc2.open(str(example_dir / "ds-hello.b2frame"))[:]
    url = "/api/fetch/foo/ds-hello.b2frame?slice_=0:30"
    frame = get(sub_host, url)  # (the upstream client: an SChunk cframe)
    assert frame.status_code == 200, frame.text
    assert blosc2.schunk_from_cframe(frame.content)[:] == hello[:30]
    for asked in ("&buffer=true", "&prefer_schunk=true", "&prefer_schunk=false"):
        r = get(sub_host, url + asked)  # (ours, and 0.2-era ones: one compressed buffer)
        assert r.status_code == 200 and blosc2.decompress2(r.content) == hello[:30], asked
    readme = (example_dir / "README.md").read_bytes()
    r = get(sub_host, "/api/fetch/foo/README.md")
    assert blosc2.schunk_from_cframe(r.content)[:] == readme


def test_array_selections_do_not_depend_on_prefer_schunk(sub_host, example_dir):
    a = stored_array(example_dir / "dir1/ds-2d.b2nd")
    for asked in ("", "&prefer_schunk=true", "&prefer_schunk=false"):
        r = get(sub_host, f"/api/fetch/foo/dir1/ds-2d.b2nd?slice_=1:3,2:9{asked}")
        assert r.status_code == 200, r.text
        assert np.array_equal(blosc2.ndarray_from_cframe(r.content)[:], a[1:3, 2:9]), asked


def test_one_field_of_structured_records(sub_host, example_dir):
    records = stored_array(example_dir / "ds-1d-fields.b2nd")
    r = get(sub_host, "/api/fetch/foo/ds-1d-fields.b2nd?field=b")
    assert r.status_code == 200, r.text
    assert np.array_equal(blosc2.ndarray_from_cframe(r.content)[:], records["b"])
    r = get(sub_host, "/api/fetch/foo/ds-1d-fields.b2nd?field=a&slice_=5:9&buffer=true")
    assert np.array_equal(blosc2.ndarray_from_cframe(r.content)[:], records["a"][5:9])


def test_chunks_are_served_as_stored(sub_host, example_dir):
    source = example_dir / "dir1/ds-3d.b2nd"
    opened = blosc2.open(str(source), mode="r")
    for n in range(opened.schunk.nchunks):
        r = get(sub_host, f"/api/chunk/foo/dir1/ds-3d.b2nd?nchunk={n}")
        assert r.status_code == 200, r.text
        assert r.content == stored_chunk(source, n), f"chunk {n}"
    readme = get(sub_host, "/api/chunk/foo/README.md?nchunk=0")  # (its Blosc2 frame's)
    assert readme.status_code == 200, readme.text
    assert (example_dir / "README.md").read_bytes().startswith(blosc2.decompress(readme.content))


def test_download_answers_the_file_to_those_asking_for_blosc2(sub_host, example_dir, tmp_path):
    plain = get(sub_host, "/api/download/foo/README.md")  # (ours and 0.2's: where it is)
    assert plain.json() == f"http://{sub_host}/files/foo/README.md.b2"
    coded = get(sub_host, "/api/download/foo/README.md", headers={"Accept-Encoding": "blosc2"})
    assert coded.status_code == 200 and coded.headers["content-encoding"] == "blosc2"
    packed = tmp_path / "README.md.b2"
    packed.write_bytes(coded.content)
    unpacked = b"".join(blosc2.open(str(packed)).decompress_chunk(n)
                        for n in range(blosc2.open(str(packed)).nchunks))
    assert unpacked == (example_dir / "README.md").read_bytes()
    array = get(sub_host, "/api/download/foo/dir2/ds-4d.b2nd",
                headers={"Accept-Encoding": "gzip, blosc2"})
    assert array.status_code == 200 and "content-encoding" not in array.headers
    saved = tmp_path / "ds-4d.b2nd"
    saved.write_bytes(array.content)
    assert np.array_equal(stored_array(saved), stored_array(example_dir / "dir2/ds-4d.b2nd"))
    refused = get(sub_host, "/api/download/foo/README.md",
                  headers={"Accept-Encoding": "blosc2;q=0"})
    assert refused.json() == plain.json()


def test_byte_ranges_of_selections_are_refused(sub_host):
    r = get(sub_host, "/api/fetch/foo/dir1/ds-2d.b2nd", headers={"Range": "bytes=0-99"})
    assert r.status_code == 416 and r.headers["accept-ranges"] == "none", r.text
    assert "byte ranges" in r.json()["detail"]
