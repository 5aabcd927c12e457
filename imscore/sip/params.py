"""An ordered, case-insensitive parameter list that round-trips what the peer wrote."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .grammar import unquote

__all__ = ["Params"]


class Params:
    """Parameters of a URI or a header value (``;name=value;flag``).

    Names compare case-insensitively but keep the spelling they were written with; values are kept as
    written (a quoted value keeps its quotes, see :meth:`unquoted`); order is preserved, so a parsed
    parameter list serialises back unmangled. A parameter without a value has the value ``None``.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str | None]] = ()) -> None:
        self._items: list[tuple[str, str | None]] = list(items)

    def _index(self, name: str) -> int:
        # (hot: Via branch, To tag and Contact expires are read for every request; only a name of
        # the same length can match, and most peers spell names as we ask for them)
        size = len(name)
        lname = ""  # lower-cased only when a name of that length is not spelled the same
        for i, (key, _value) in enumerate(self._items):
            if len(key) == size:
                if key == name:
                    return i
                if not lname:
                    lname = name.lower()
                if key.lower() == lname:
                    return i
        return -1

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._index(name) >= 0

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value as written (``None`` for a flag parameter), or ``default`` when absent."""
        items = self._items
        if not items:
            return default
        i = self._index(name)
        return default if i < 0 else items[i][1]

    def unquoted(self, name: str) -> str | None:
        """The value with quotes and escapes removed (``None`` when absent or a flag)."""
        value = self.get(name)
        return None if value is None else unquote(value)

    def __getitem__(self, name: str) -> str | None:
        i = self._index(name)
        if i < 0:
            raise KeyError(name)
        return self._items[i][1]

    def set(self, name: str, value: str | None = None) -> None:
        """Set a parameter, keeping its place (and spelling) if present, else appending it."""
        i = self._index(name)
        if i < 0:
            self._items.append((name, value))
        else:
            self._items[i] = (self._items[i][0], value)

    def __setitem__(self, name: str, value: str | None) -> None:
        self.set(name, value)

    def remove(self, name: str) -> None:
        """Remove every parameter of that name (no error if absent)."""
        lname = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]

    def __delitem__(self, name: str) -> None:
        if self._index(name) < 0:
            raise KeyError(name)
        self.remove(name)

    def items(self) -> list[tuple[str, str | None]]:
        """The parameters in order, names as written."""
        return list(self._items)

    def names(self) -> list[str]:
        """Lower-cased names in order."""
        return [k.lower() for k, _ in self._items]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def copy(self) -> Params:
        return Params(self._items)

    def __str__(self) -> str:
        if not self._items:
            return ""
        return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self._items)

    def __repr__(self) -> str:
        return f"Params({self._items!r})"

    def __eq__(self, other: object) -> bool:
        """Equal when the same names (any case, any order) carry equal values (quoted ones exactly,
        tokens case-insensitively)."""
        if not isinstance(other, Params):
            return NotImplemented
        return self._normal() == other._normal()

    __hash__ = None  # type: ignore[assignment]

    def _normal(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for k, v in self._items:
            if v is not None and not v.startswith('"'):
                v = v.lower()
            out[k.lower()] = v
        return out
