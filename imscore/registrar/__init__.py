"""The registrar: bindings, their store, binding policies and REGISTER processing."""

from .model import FlowInfo, StoredBinding

__all__ = ["FlowInfo", "StoredBinding"]
