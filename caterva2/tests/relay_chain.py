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
from caterva2.tests.harness import CountingProxy, Service, Stack, free_ports, wait_until
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

    def __init__(self, statedir: pathlib.Path, source: pathlib.Path,
                 relay_env: dict[str, str] | None = None,
                 sub_args: dict[str, list[str]] | None = None):
        self.statedir, self.source = statedir, source
        self.relay_env, self.sub_args = relay_env or {}, sub_args or {}
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

    def _publisher(self, site: str, name: str, root: str) -> None:
        port = free_ports(1)[0]
        self.links[site] = link = CountingProxy(f"127.0.0.1:{port}")
        self.pubs[site] = self.stacks[site].publisher(
            name, root, http=f"127.0.0.1:{port}", args=["--url", link.address],
            env=self.relay_env if site != "O" else None)

    def _subscriber(self, broker_site: str, site: str, root: str) -> Service:
        sub = self.stacks[broker_site].subscriber(f"sub.{site}", self.sub_args.get(site, []))
        self.subs[site] = sub
        wait_until(lambda: root in cat2.get_roots(sub.address), what=f"{root} at site {site}")
        return sub

    def _start(self) -> None:
        for site in "OAB":
            self.stacks[site] = Stack(self.statedir / site)
        self._publisher("O", "data", str(self.source))
        previous = ("O", "data")
        for site, name in (("A", "adata"), ("B", "bdata")):
            sub = self._subscriber(previous[0], site, previous[1])
            self.upstream[site] = proxy = CountingProxy(sub.address)
            self._publisher(site, name, f"http://{proxy.address}/{previous[1]}")
            previous = (site, name)
        self._subscriber("B", "C", "bdata")
        cat2.subscribe("bdata", self.host)

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
