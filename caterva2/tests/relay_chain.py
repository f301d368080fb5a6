"""A chain of sites for re-publishing tests: origin → A → B → C, each with its own broker.

- the origin publishes ``data`` (a directory) at broker O;
- site A's subscriber follows broker O; its relay publisher re-publishes ``data`` as
  ``adata`` at broker A;
- site B's subscriber follows broker A; its relay re-publishes ``adata`` as ``bdata`` at
  broker B;
- site C's subscriber follows broker B: its clients read ``bdata``.

Every publisher is reached through a :class:`CountingProxy` (``cat2pub --url``), so what
crosses each long link is counted: ``links["O"]`` (origin → A), ``links["A"]`` (A → B),
``links["B"]`` (B → C).
"""
from __future__ import annotations

import contextlib
import pathlib

import blosc2
import numpy as np

import caterva2 as cat2
from caterva2.config import API_KEY_ENV
from caterva2.tests.harness import (
    CountingProxy,
    Service,
    Stack,
    cat2admin,
    wait_until,
)
from caterva2.tools import make_root_example

BIG_SHAPE, BIG_CHUNKS, BIG_BLOCKS = (1000, 1000), (100, 1000), (10, 1000)  # 8 MB, 10 chunks


def big_array(directory: pathlib.Path, name: str = "big.b2nd", seed: int = 1) -> np.ndarray:
    """An 8 MB float64 array of 10 chunks at ``directory/name``; its data."""
    data = np.random.default_rng(seed).normal(size=BIG_SHAPE)
    blosc2.asarray(data, urlpath=str(directory / name), mode="w", chunks=BIG_CHUNKS,
                   blocks=BIG_BLOCKS)
    return data


class Chain:
    """The sites of the chain (see the module's docstring), started in order."""

    def __init__(self, statedir: pathlib.Path, source: pathlib.Path, login: str = "",
                 counted: bool = True):
        """``login``: the sites whose subscribers require a login (``--require-login``),
        e.g. ``"AC"``; each has a user ``relay`` whose key (in ``keys``) the relay
        reading it presents, and the tests use.  Without ``counted``, no proxies
        (benchmarks: nothing between the services but loopback)."""
        self.statedir, self.source, self.login = statedir, source, login
        self.counted = counted
        self.keys: dict[str, str] = {}
        self.clients: dict[str, cat2.Client] = {}
        self.stacks: dict[str, Stack] = {}
        self.links: dict[str, CountingProxy] = {}
        self.upstream: dict[str, CountingProxy] = {}  # relay → the subscriber it reads
        self.pubs: dict[str, Service] = {}
        self.subs: dict[str, Service] = {}
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _publisher(self, site: str, name: str, root: str, upstream: str | None = None) -> None:
        key = self.keys.get(upstream or "")
        env = {API_KEY_ENV: key} if key else None
        if not self.counted:
            self.pubs[site] = self.stacks[site].publisher(name, root, env=env)
            return
        self.pubs[site], self.links[site] = self.stacks[site].counted_publisher(name, root,
                                                                              env=env)

    def _subscriber(self, broker_site: str, site: str, root: str) -> Service:
        args = []
        if site in self.login:
            statedir = self.stacks[broker_site].statedir / f"sub.{site}"
            statedir.mkdir(parents=True, exist_ok=True)
            done = cat2admin("--statedir", statedir, "adduser", "relay")
            assert done.returncode == 0, done.stderr
            self.keys[site] = done.stdout.split()[-1]
            args = ["--require-login"]
        sub = self.stacks[broker_site].subscriber(f"sub.{site}", args)
        self.subs[site] = sub
        wait_until(lambda: root in self.client(site).roots(), what=f"{root} at site {site}")
        return sub

    def client(self, site: str) -> cat2.Client:
        """A client of the subscriber of ``site`` (as user ``relay`` where login is
        required)."""
        if site not in self.clients:
            self.clients[site] = cat2.Client(self.subs[site].address,
                                             api_key=self.keys.get(site))
        return self.clients[site]

    def _start(self) -> None:
        for site in "OAB":
            self.stacks[site] = Stack(self.statedir / site)
        self._publisher("O", "data", str(self.source))
        previous = ("O", "data")
        for site, name in (("A", "adata"), ("B", "bdata")):
            sub = self._subscriber(previous[0], site, previous[1])
            address = sub.address
            if self.counted:
                self.upstream[site] = proxy = CountingProxy(sub.address)
                address = proxy.address
            self._publisher(site, name, f"http://{address}/{previous[1]}", site)
            previous = (site, name)
        self._subscriber("B", "C", "bdata")
        self.client("C").subscribe("bdata")

    @property
    def host(self) -> str:
        """Where the last site's clients read ``bdata``."""
        return self.subs["C"].address

    def moved(self) -> dict[str, int]:
        """Bytes sent down each long link so far."""
        return {site: link.counters().down for site, link in self.links.items()}

    def wait_listed(self, path: str, timeout: float = 20) -> None:
        wait_until(lambda: path in cat2.get_list("bdata", self.host), timeout=timeout,
                   what=f"{path} listed at the end of the chain")

    def stop(self) -> None:
        for client in self.clients.values():
            client.close()
        for stack in reversed(list(self.stacks.values())):
            stack.stop()
        for proxy in [*self.links.values(), *self.upstream.values()]:
            with contextlib.suppress(Exception):
                proxy.close()


def example_source(directory: pathlib.Path) -> pathlib.Path:
    """The example root, and ``big.b2nd``, in ``directory``."""
    make_root_example.make(directory)
    big_array(directory)
    return directory
