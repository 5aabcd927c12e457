"""A node's name in a pool (``imscore serve --node-id NAME``): in every log line, and in the bindings
it stores (``extra["node"]``, see :mod:`imscore.registrar.redis_store`)."""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = ["NodeLogFilter", "check_node_id", "name_node_in_logs"]

_NODE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_node_id(text: str) -> str:
    """A node id: 1-63 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit.

    :raises ValueError: naming what was expected.
    """
    if not _NODE_ID.fullmatch(text):
        raise ValueError(
            f"{text!r}: expected 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


class NodeLogFilter(logging.Filter):
    """Adds ``node`` to each record and starts its message with ``[node NAME]``."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "node", None) is None:
            record.node = self.node_id
            record.msg = f"[node {self.node_id}] {record.msg}"
        return True


def name_node_in_logs(node_id: str) -> None:
    """Name the node in every line the root logger's handlers write."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(NodeLogFilter(node_id))
