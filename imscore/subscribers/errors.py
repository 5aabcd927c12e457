"""The one exception of the subscriber loader."""

from __future__ import annotations

__all__ = ["SubscriberError"]


class SubscriberError(Exception):
    """A subscriber file could not be read or is invalid; start-up must stop.

    ``str(error)`` is one line: the file as the user named it, then the entry (``subscribers[1]`` and,
    once known, its IMPI in parentheses), then the key inside the entry, then what was expected::

        subs.yaml: subscribers[1] (bob@ims.example.test): key 'aka.amf': expected 4 hex digits ...

    The message never contains a password or a key (K, OP, OPc): for those it says what kind of value
    was found, not the value.

    :param source: the file path as the user gave it.
    :param detail: what was wrong and what was expected.
    :param index: the position of the entry in the ``subscribers`` list, ``None`` for the file as a
        whole.
    :param impi: the entry's private identity, when it has a valid one.
    :param key: the key path inside the entry (``aka.k``, ``implicit_sets[0][1]``) or, without an
        ``index``, from the top of the document (``subscribers``); ``None`` when none applies.
    :param entry: how the message names the entry instead of ``subscribers[index]``: a bulk file
        (:mod:`imscore.subscribers.bulk`) says ``line 12``.
    """

    def __init__(
        self,
        source: str,
        detail: str,
        *,
        index: int | None = None,
        impi: str | None = None,
        key: str | None = None,
        entry: str | None = None,
    ) -> None:
        self.source = source
        self.detail = detail
        self.index = index
        self.impi = impi
        self.key = key
        parts = [source]
        if index is not None or entry is not None:
            name = entry if entry is not None else f"subscribers[{index}]"
            parts.append(name + (f" ({impi})" if impi else ""))
        if key is not None:
            parts.append(f"key {key!r}")
        parts.append(detail)
        super().__init__(": ".join(parts))
