"""Configuration: the ``caterva2.toml`` file, command-line options and defaults.

Command-line options override the file; the file overrides the defaults.  A program may
read other programs' sections (a subscriber finds its broker in ``[broker] http``).
Clients (the library and ``cat2cli``) find their subscriber with :func:`subscriber_address`:
an explicit address, else ``CATERVA2_SUBSCRIBER``, else the file, else the default.
"""
from __future__ import annotations

import argparse
import decimal
import os
import pathlib
import re
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from caterva2 import paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BROKER_DEFAULT = "localhost:8000"
PUBLISHER_DEFAULT = "localhost:8001"
SUBSCRIBER_DEFAULT = "localhost:8002"
CONF_DEFAULT = "caterva2.toml"
SUBSCRIBER_ENV = "CATERVA2_SUBSCRIBER"
API_KEY_ENV = "CATERVA2_API_KEY"  # a user's key, for subscribers that require a login
BROKER_TOKEN_ENV = "CATERVA2_BROKER_TOKEN"


class ConfigError(Exception):
    """A configuration file that cannot be read, or an option with a bad value."""


def load(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read configuration file ``path``: ConfigError if it does not exist or cannot be read.

    ``path`` None is the default, ``./caterva2.toml``, which may be missing (an empty
    configuration): a file the user named is one they expect to be read, a typo in its
    name must not start a service with other settings than theirs.
    """
    named = path is not None
    file = pathlib.Path(CONF_DEFAULT if path is None else path)
    if not file.exists():
        if named:
            raise ConfigError(f"configuration file {file} does not exist")
        return {}
    try:
        with open(file, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read configuration file {file}: {e}") from None


def conf_name(path: str | os.PathLike[str] | None) -> str:
    """The name of configuration file ``path`` for messages (None: the default's)."""
    return CONF_DEFAULT if path is None else str(path)


def check_id(conf: dict[str, Any], kind: str, id_: str | None,
             path: str | os.PathLike[str] | None) -> None:
    """ConfigError unless ``--id ID`` has its section ``[kind.ID]`` in the configuration
    (read from ``path``): an ID without one would silently start with another's settings."""
    table = conf.get(kind, {})
    if id_ and not (isinstance(table, dict) and isinstance(table.get(id_), dict)):
        raise ConfigError(f"--id {id_}: no section [{kind}.{id_}] in {conf_name(path)}")


def section(conf: dict[str, Any], name: str, id_: str | None = None) -> dict[str, Any]:
    """Section ``name`` (or ``name.ID``), with ``name.ID`` keys overriding ``name`` keys."""
    table = conf.get(name, {})
    sub = table.get(id_, {}) if id_ and isinstance(table, dict) else {}
    if not isinstance(table, dict) or not isinstance(sub, dict):
        where = f"{name}.{id_}" if isinstance(table, dict) else name
        raise ConfigError(f"configuration: [{where}] must be a table of settings")
    base = {k: v for k, v in table.items() if not isinstance(v, dict)}
    base.update(sub)
    return base


def parse_host(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (port 0 asks the system for a free port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT (port 0 to 65535), got {text!r}")
    return host or "localhost", int(port)


def announced_address(url: str) -> str:
    """The address a publisher announces to its broker, from ``http(s)://HOST:PORT`` or
    ``HOST:PORT`` (``cat2pub --url``): where subscribers reach it (a proxy, a NAT).

    Other schemes, paths, queries and a missing or zero port are refused (ConfigError; see
    :func:`caterva2.paths.check_address`, which the broker applies too).

    >>> announced_address("http://gateway.example.org:8080/")
    'gateway.example.org:8080'
    """
    try:
        return paths.check_address(url)
    except ValueError as e:
        raise ConfigError(str(e).replace("bad publisher address", "bad publisher URL",
                                          1)) from None


PROGRAMS = {"broker": "cat2bro", "publisher": "cat2pub", "subscriber": "cat2sub"}


def service_parser(description: str, kind: str) -> argparse.ArgumentParser:
    """Options shared by every service (see SPEC "Services: common options")."""
    p = argparse.ArgumentParser(prog=PROGRAMS[kind], description=description)
    p.add_argument("--http", help="HOST:PORT to listen on (port 0: any free port)")
    p.add_argument("--loglevel", help="logging level (default: warning)")
    p.add_argument("--statedir", help="directory for this service's state")
    p.add_argument("--conf", help=f"configuration file, which must exist (default: "
                                  f"./{CONF_DEFAULT}, if there is one)")
    p.add_argument("--certfile", help="listen with TLS: the certificate (PEM; with --keyfile)")
    p.add_argument("--keyfile", help="listen with TLS: the certificate's private key (PEM)")
    if kind in ("publisher", "subscriber"):
        p.add_argument("--broker", help="HOST:PORT of the broker (https://HOST:PORT if it "
                                        "listens with TLS)")
        p.add_argument("--id", help=f"selects section [{kind}.ID] of the configuration file")
    return p


def resolve(args: argparse.Namespace, kind: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Merge defaults, the configuration file and command-line options for a service."""
    conf = load(args.conf)
    id_ = getattr(args, "id", None)
    check_id(conf, kind, id_, args.conf)
    settings = dict(defaults)
    if id_ and "statedir" in defaults:
        settings["statedir"] = f"{defaults['statedir']}.{id_}"
    settings.update(section(conf, kind, id_))
    if "broker" in defaults:
        settings["broker"] = section(conf, "broker").get("http", defaults["broker"])
    if kind == "subscriber":
        settings["access"] = conf.get("access", {})  # (who may use which root)
    if kind == "publisher" and "token" not in settings:  # (one file for a whole deployment)
        settings["token"] = section(conf, "broker").get("token")
    for key, value in vars(args).items():
        if value is not None and key not in ("conf", "id"):
            settings[key] = value
    settings["loglevel"] = str(settings.get("loglevel", "warning")).lower()
    for key in ("http", "broker", "statedir", "url", "certfile", "keyfile", "ca_bundle"):
        if settings.get(key) is not None and not isinstance(settings[key], str):
            raise ConfigError(f"{key} must be a string, got {settings[key]!r}")
    if "http" in settings:
        parse_host(settings["http"])
    if "broker" in settings:
        try:
            settings["broker"] = paths.check_address(settings["broker"], "broker address")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if bool(settings.get("certfile")) != bool(settings.get("keyfile")):
        raise ConfigError("TLS needs both certfile and keyfile (--certfile, --keyfile)")
    return settings


def broker_token(configured: Any = None,
                 environ: Mapping[str, str] | None = None) -> str | None:
    """The token publishers present to their broker (and a broker requires of them):
    ``CATERVA2_BROKER_TOKEN`` if set and not empty, else ``configured`` (``token`` in
    ``[broker]``, or for a publisher in ``[publisher]`` and then ``[broker]``), else None:
    no token, an open broker.  ``environ`` defaults to ``os.environ``.

    ConfigError unless it is 1 to 1000 printable ASCII characters without spaces (it
    travels in an HTTP header: ``Authorization: Bearer TOKEN``).
    """
    from_env = (os.environ if environ is None else environ).get(BROKER_TOKEN_ENV)
    value, where = (from_env, BROKER_TOKEN_ENV) if from_env else (configured, "token")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 1000 \
            or not all(33 <= ord(c) < 127 for c in value):
        raise ConfigError(f"{where} must be 1 to 1000 printable ASCII characters without "
                          "spaces")
    return value


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, name: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h`` or ``1d`` (a plain number is seconds);
    ConfigError for anything else, zero included.

    >>> parse_duration("1d"), parse_duration("1.5m"), parse_duration(30)
    (86400.0, 90.0, 30.0)
    """
    match = None if isinstance(value, bool) or not isinstance(value, (int, float, str)) \
        else _DURATION.fullmatch(str(value))
    if match is None or float(match[1]) <= 0:
        raise ConfigError(f"{name} must be a time such as 90s, 15m, 12h or 1d (more than "
                          f"zero), got {value!r}")
    return float(match[1]) * _SECONDS[match[2].lower()]


def format_duration(seconds: float) -> str:
    """A time for people, in its largest whole unit of s, m, h, d (as
    :func:`parse_duration` takes them).

    >>> format_duration(86400), format_duration(90), format_duration(5400), format_duration(2.5)
    ('1d', '90s', '90m', '2.5s')
    """
    for unit in ("d", "h", "m"):
        if seconds >= _SECONDS[unit] and seconds % _SECONDS[unit] == 0:
            return f"{seconds / _SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s" if seconds < 60 or seconds % 60 else f"{seconds / 60:g}m"


SIZE_UNITS = {"kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_UNITS_LOWER = {"": 1, "b": 1, **{u.lower(): f for u, f in SIZE_UNITS.items()}}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(value: Any, name: str = "size") -> int | None:
    """A size in bytes from ``500MB``, ``20GB``, ``1.5GiB`` or a plain number of bytes.

    Units: kB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers of 1024 (case does
    not matter).  ``none`` or ``unlimited`` (or an absent value) mean no limit: None.
    ConfigError for anything else, a size of zero included.

    >>> parse_size("500MB"), parse_size("1 GiB"), parse_size(4096), parse_size("unlimited")
    (500000000, 1073741824, 4096, None)
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none",
                                                                             "unlimited")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{name} must be a size such as 500MB or 20GB, got {value!r}")
    match = _SIZE.fullmatch(str(value))
    factor = _UNITS_LOWER.get(match[2].lower()) if match else None
    if match is None or factor is None:
        raise ConfigError(f"{name} must be a size such as 500MB, 20GB or 512MiB (units: B, "
                          f"{', '.join(SIZE_UNITS)}), got {value!r}")
    size = int(decimal.Decimal(match[1]) * factor)
    if size <= 0:
        raise ConfigError(f"{name} must be more than zero bytes, got {value!r}")
    return size


def format_size(size: int | None) -> str:
    """A size for people, in the largest unit that gives at least 1 (and an exact figure
    with at most two decimals, if one does): ``none`` for no limit.

    >>> format_size(500_000_000), format_size(2**29), format_size(3_500_000), format_size(999)
    ('500 MB', '512 MiB', '3.5 MB', '999 bytes')
    """
    if size is None:
        return "none"
    by_size = sorted(SIZE_UNITS.items(), key=lambda item: -item[1])
    for unit, factor in by_size:
        if size >= factor and (size * 100) % factor == 0:
            return f"{size / factor:g} {unit}"
    for unit, factor in by_size:
        if size >= factor and "i" not in unit:
            return f"{size / factor:.3g} {unit}"
    return f"{size} bytes"


def check_client_host(host: str) -> None:
    """ConfigError unless ``host`` is ``HOST:PORT`` or an ``http(s)://`` URL with a valid port."""
    if host.startswith(("http://", "https://")):
        try:
            parts = urllib.parse.urlsplit(host)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as e:
            raise ConfigError(f"bad subscriber URL {host!r}: {e}") from None
        if not parts.hostname:
            raise ConfigError(f"bad subscriber URL {host!r}: no host")
    else:
        parse_host(host)


def subscriber_in_conf(conf_path: str | os.PathLike[str] | None = None) -> str | None:
    """The subscriber named by a configuration file (``[subscriber] url``, else ``http``),
    or None if it names none (see :func:`load`: None is the default file, which may be
    missing)."""
    sub = section(load(conf_path), "subscriber")
    url = sub.get("url")
    if url:
        return str(url).rstrip("/")
    return str(sub["http"]) if "http" in sub else None


def client_host(conf_path: str | None = None) -> str:
    """The subscriber a client talks to: ``[subscriber] url`` or ``http``, else the default."""
    return subscriber_in_conf(conf_path) or SUBSCRIBER_DEFAULT


def subscriber_address(explicit: str | None = None,
                       conf_path: str | os.PathLike[str] | None = None,
                       environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Where a client finds its subscriber, and where that address came from.

    In order: ``explicit`` (source ``"argument"``), the environment variable
    ``CATERVA2_SUBSCRIBER`` if set and not empty, ``[subscriber] url`` or ``http`` of the
    configuration file ``conf_path`` (None: ``./caterva2.toml`` if there is one; source:
    the file's name), ``localhost:8002`` (source ``"the default"``).  ``environ`` defaults
    to ``os.environ``.  The address is not checked here (see :func:`check_client_host`);
    ConfigError if the file cannot be read, or was named and does not exist.

    >>> subscriber_address("example.org:8002")
    ('example.org:8002', 'argument')
    >>> subscriber_address(environ={"CATERVA2_SUBSCRIBER": "localhost:9000"})
    ('localhost:9000', 'CATERVA2_SUBSCRIBER')
    """
    if explicit is not None:
        return explicit, "argument"
    value = (os.environ if environ is None else environ).get(SUBSCRIBER_ENV)
    if value:
        return value, SUBSCRIBER_ENV
    from_conf = subscriber_in_conf(conf_path)
    if from_conf is not None:
        return from_conf, conf_name(conf_path)
    return SUBSCRIBER_DEFAULT, "the default"
