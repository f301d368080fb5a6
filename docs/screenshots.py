"""Screenshots of the web interface: the dataset pages of a 1-D, a 2-D and a 3-D array.

    python docs/screenshots.py [OUTPUT_DIR]      (default: docs/)

Starts a broker, a publisher and a subscriber on free loopback ports (in a temporary
directory), publishing a root made here, ``lab``: a noisy damped oscillation (1-D), an
interference pattern (2-D) and a phantom of ellipsoids for tomography (3-D).  Then opens
each dataset's page in headless Chromium (see ``caterva2/tests/browser.py``) and saves
``web-1d.png``, ``web-2d.png`` and ``web-3d.png``.
"""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import blosc2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # (this checkout's caterva2, here and in the services)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                         os.environ.get("PYTHONPATH")]))

from caterva2.tests import browser
from caterva2.tests.harness import Stack

VIEWPORT = {"width": 1280, "height": 860}


def make_root(directory: pathlib.Path) -> pathlib.Path:
    """The ``lab`` root: three arrays worth looking at, and a README."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(7)
    t = np.linspace(0, 12, 5000)
    signal = np.exp(-t / 5) * np.sin(2 * np.pi * 0.8 * t) + rng.normal(0, 0.03, t.size)
    blosc2.asarray(signal, urlpath=str(directory / "signal.b2nd"), mode="w", chunks=(1000,))
    y, x = np.mgrid[-1:1:400j, -1.5:1.5:600j]
    waves = sum(np.cos(25 * np.hypot(x - cx, y - cy)) for cx, cy in ((-.6, 0), (.6, 0)))
    blosc2.asarray(waves.astype(np.float32), urlpath=str(directory / "waves.b2nd"), mode="w",
                   chunks=(100, 150))
    blosc2.asarray(phantom(96, 192, 192), urlpath=str(directory / "phantom.b2nd"), mode="w",
                   chunks=(16, 64, 64))
    (directory / "README.md").write_text("# Lab\n\nThree arrays for the screenshots of the "
                                         "web interface.\n")
    return directory


def phantom(nz: int, ny: int, nx: int) -> np.ndarray:
    """A 3-D phantom: a head-like ellipsoid with a few inner ones of other densities."""
    z, y, x = np.mgrid[-1:1:nz * 1j, -1:1:ny * 1j, -1:1:nx * 1j]
    volume = np.zeros((nz, ny, nx), dtype=np.float32)
    for density, (cz, cy, cx), (rz, ry, rx) in [
            (1.0, (0, 0, 0), (.9, .92, .7)), (-.6, (0, 0, 0), (.8, .85, .62)),
            (.5, (.1, -.25, .2), (.3, .2, .15)), (.5, (-.1, -.25, -.2), (.3, .2, .15)),
            (.3, (0, .35, 0), (.25, .25, .25)), (.8, (.3, .1, -.1), (.12, .08, .08))]:
        inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        volume[inside] += density
    return volume


def main() -> None:
    from playwright.sync_api import sync_playwright

    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs"
    with tempfile.TemporaryDirectory() as tmp:
        root = make_root(pathlib.Path(tmp) / "lab")
        stack = Stack(pathlib.Path(tmp) / "state")
        try:
            lab = stack.publish_root("lab", root)
            import caterva2 as cat2
            cat2.subscribe("lab", lab.host)
            base = f"http://{lab.host}/roots/lab"
            with sync_playwright() as p:
                chromium = browser.launch(p)
                page = chromium.new_page(viewport=VIEWPORT)
                for name, url in [("web-1d.png", f"{base}/signal.b2nd"),
                                  ("web-2d.png", f"{base}/waves.b2nd?cmap=magma"),
                                  ("web-3d.png", f"{base}/phantom.b2nd?cmap=gray&i0=40")]:
                    page.goto(url)
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=str(out / name), full_page=True)
                    print(f"saved {out / name}")
                chromium.close()
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
