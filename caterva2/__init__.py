"""Caterva2: on-demand access to remote Blosc2 data repositories.

This package is the client library (see :mod:`caterva2.client`); the services live in
:mod:`caterva2.services` and need the ``services`` extra.
"""
from caterva2.client import (
    Client,
    ConnectionFailed,
    Dataset,
    File,
    Root,
    ServerError,
    UnverifiedWarning,
    bro_host_default,
    download,
    fetch,
    get_info,
    get_list,
    get_roots,
    pub_host_default,
    sub_host_default,
    subscribe,
    unsubscribe,
)
from caterva2.wire import AnswerCut

__version__ = "0.3.0.dev0"

__all__ = ["AnswerCut", "Client", "ConnectionFailed", "Dataset", "File", "Root",
           "ServerError", "UnverifiedWarning", "__version__", "bro_host_default", "download",
           "fetch", "get_info", "get_list", "get_roots", "pub_host_default", "sub_host_default",
           "subscribe", "unsubscribe"]
