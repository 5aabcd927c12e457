"""The server: the sans-IO transaction user (:mod:`.core`) and its asyncio runtime (:mod:`.runtime`)."""

from .core import ALLOWED_METHODS, KNOWN_METHODS, ServerCore, ServerCounters

__all__ = ["ALLOWED_METHODS", "KNOWN_METHODS", "ServerCore", "ServerCounters"]
