"""Which build of imscore runs: pure Python, or with its hot modules compiled by mypyc.

``setup.py`` compiles :data:`COMPILED_MODULES` with mypyc when it can (a C compiler and mypy at
install time, and ``IMSCORE_PURE`` unset); everywhere else the same modules run as plain Python.
Both builds behave the same (``tests/test_differential.py``); the compiled one is faster.
This module imports nothing of imscore at load time, so ``setup.py`` can read the list from it.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

__all__ = ["COMPILED_MODULES", "compiled_modules", "describe"]

#: the modules mypyc compiles, in build order: the SIP parser every request runs through, then the
#: transaction layer, Digest, the registrar, the server core, the REGISTER specialisation, the
#: retransmission cache, the datagram backlog and the subscriber directory (the hot path of a
#: registration)
COMPILED_MODULES: tuple[str, ...] = (
    "imscore.sip.grammar",
    "imscore.sip.params",
    "imscore.sip.uri",
    "imscore.sip.headers",
    "imscore.sip.message",
    "imscore.sip.framing",
    "imscore.sip.transaction",
    "imscore.auth.digest",
    "imscore.registrar.authenticator",
    "imscore.registrar.register",
    "imscore.server.retransmit",
    "imscore.server.core",
    "imscore.server.fastreg",
    "imscore.transport.backlog",
    "imscore.subscribers.directory",
)


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` that were loaded from a compiled extension."""
    found = []
    for name in COMPILED_MODULES:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        if path.endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(name)
    return found


def describe() -> str:
    """``"compiled: mypyc, 15 of 15 modules"`` or ``"pure Python"``, for ``--version`` and the log."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    return f"compiled: mypyc, {len(compiled)} of {len(COMPILED_MODULES)} modules"
