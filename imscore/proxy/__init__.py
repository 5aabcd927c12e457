"""The forking proxy (RFC 3261 §16): the sans-IO core, its routing helpers and the async service."""

from .core import COMPLETED_ELSEWHERE, Branch, Destination, ForkContext, NeedFlow, ProxyCore, Target

__all__ = [
    "COMPLETED_ELSEWHERE",
    "Branch",
    "Destination",
    "ForkContext",
    "NeedFlow",
    "ProxyCore",
    "Target",
]
