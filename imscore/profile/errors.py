"""The one exception of the profile loader."""

from __future__ import annotations

__all__ = ["ProfileError"]


class ProfileError(Exception):
    """A profile could not be read or is invalid; start-up must stop.

    ``str(error)`` is one line that starts with the file (or, for a profile name that does not
    resolve, the name), then the key path when one applies, then what was expected.

    :param source: the file path as the user gave it (or the profile name).
    :param detail: what was wrong and what was expected.
    :param key: the dotted key path (``registrar.min_expires``, ``listeners[1]``) or ``None``.
    """

    def __init__(self, source: str, detail: str, *, key: str | None = None) -> None:
        self.source = source
        self.key = key
        self.detail = detail
        where = f"{source}: key {key!r}" if key is not None else source
        super().__init__(f"{where}: {detail}")
