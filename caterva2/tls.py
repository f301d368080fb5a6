"""TLS: services that listen with a certificate, and clients that check the ones they meet.

Any service listens with TLS when given a certificate and its key (``--certfile`` and
``--keyfile``, or ``certfile`` and ``keyfile`` in its section of the configuration).  Its
address then reads ``https://HOST:PORT`` wherever it is given or announced: a broker's
(``--broker https://HOST:PORT``), a publisher's (announced to the broker), a subscriber's
(``CATERVA2_SUBSCRIBER=https://HOST:PORT``); a bare ``HOST:PORT`` means plain HTTP.

Every client (the library, ``cat2cli``, and the services when they talk to one another)
checks certificates against the system's CAs, or against the CA bundle named by the
environment variable ``CATERVA2_CA_BUNDLE`` (or ``ca_bundle`` in a service's section, or
the ``ca_bundle`` argument of :class:`caterva2.Client`): a private CA is trusted only
where it is named.  Checking is never turned off.
"""
from __future__ import annotations

import functools
import os
import re
import ssl

CA_BUNDLE_ENV = "CATERVA2_CA_BUNDLE"
_configured: str | None = None  # a service's ca_bundle setting (see use_ca_bundle)


def base_url(address: str) -> str:
    """The URL base of a service at ``address``: ``HOST:PORT`` is plain HTTP,
    ``http(s)://HOST:PORT`` says its scheme (a trailing ``/`` dropped)."""
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    return f"http://{address}"


def websocket_url(address: str, path: str) -> str:
    """The WebSocket URL of ``path`` at a service at ``address`` (``wss`` over TLS)."""
    url = base_url(address)
    return ("wss://" + url.removeprefix("https://") if url.startswith("https://")
            else "ws://" + url.removeprefix("http://")) + path


def ca_bundle(configured: str | None = None) -> str | None:
    """The CA bundle to check certificates with: ``configured``, else the service's
    (:func:`use_ca_bundle`), else ``$CATERVA2_CA_BUNDLE``, else None (the system's CAs)."""
    return configured or _configured or os.environ.get(CA_BUNDLE_ENV) or None


def use_ca_bundle(path: str | None) -> None:
    """Make ``path`` (a service's ``ca_bundle`` setting) the bundle of every client in this
    process; ValueError, saying why, if it cannot be read."""
    global _configured
    try:
        _context(ca_bundle(path))
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot use the CA bundle {ca_bundle(path)}: {e}") from None
    _configured = path


@functools.lru_cache(maxsize=8)
def _context(cafile: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def client_context(configured: str | None = None) -> ssl.SSLContext:
    """An SSL context for clients that checks certificates and host names against the CA
    bundle :func:`ca_bundle` finds (FileNotFoundError, or ssl.SSLError, if it cannot be
    read).  One per bundle, shared."""
    return _context(ca_bundle(configured))


def verify_failure(error: Exception) -> str:
    """Why a certificate could not be checked, in OpenSSL's words, from the error."""
    found = re.search(r"certificate verify failed: ([^(]+)", str(error))
    return found.group(1).strip() if found else str(error)
