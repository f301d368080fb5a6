"""How fast can a Python client read a large HTTP body on loopback?  httpx vs http.client.

    .venv/bin/python bench/http_read.py [--mb 100] [--repeat 7]

A uvicorn server (a subprocess, as our services are) streams a body of 1.6 MB pieces, the
size of a typical stored chunk, with and without Content-Length.  The client reads it
with httpx (``iter_raw``) and with the standard library's ``http.client`` (``readinto`` a
reused buffer), which is what :mod:`caterva2.http_data` uses for data answers.  Prints the
median time of each, in seconds; no thresholds.
"""
from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import time

import httpx

from caterva2.tests.harness import free_ports, wait_until

PIECE = 1_600_000


def serve(port: int, npieces: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    piece = os.urandom(PIECE)

    async def body():
        for _ in range(npieces):
            yield piece

    @app.get("/chunked")
    async def chunked():
        return StreamingResponse(body())

    @app.get("/length")
    async def length():
        return StreamingResponse(body(), headers={"Content-Length": str(npieces * PIECE)})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def read_httpx(client: httpx.Client, url: str) -> int:
    total = 0
    with client.stream("GET", url) as r:
        for data in r.iter_raw(1 << 20):
            total += len(data)
    return total


def read_http_client(conn: http.client.HTTPConnection, path: str, buffer: bytearray) -> int:
    conn.request("GET", path)
    r = conn.getresponse()
    total = 0
    while n := r.readinto(buffer):
        total += n
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="body size in MB (default 100)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    npieces = max(1, args.mb * 1_000_000 // PIECE)
    port = free_ports(1)[0]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(npieces)])
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1), timeout=30,
                   what="the test server")
        client = httpx.Client(timeout=60)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        buffer = bytearray(4 << 20)
        print(f"body: {npieces * PIECE / 1e6:.0f} MB in {npieces} pieces; median of "
              f"{args.repeat} reads, seconds")
        for path in ("/length", "/chunked"):
            times = {}
            for name, read in (("httpx", lambda p=path: read_httpx(client, f"http://127.0.0.1:{port}{p}")),
                               ("http.client", lambda p=path: read_http_client(conn, p, buffer))):
                samples = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    assert read() == npieces * PIECE
                    samples.append(time.perf_counter() - t)
                times[name] = statistics.median(samples)
            print(f"{path:9} httpx {times['httpx']:.4f}  http.client {times['http.client']:.4f}"
                  f"  ratio {times['httpx'] / times['http.client']:.1f}x")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
