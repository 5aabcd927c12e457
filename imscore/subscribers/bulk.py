"""The bulk subscriber file: JSON Lines, one subscriber per line.

Each non-blank line that does not start with ``#`` is one JSON object with the keys of an entry of
the YAML file's ``subscribers`` list (:data:`~imscore.subscribers.loader.ENTRY_KEYS`), checked by
the same validator; messages name the line instead of the list index::

    subs.jsonl: line 7 (bob@ims.example.test): key 'aka.amf': expected 4 hex digits (2 octets), ...

The subscribers land in a :class:`~imscore.subscribers.compact.CompactDirectory`, which keeps each
line's bytes and builds the subscriber on look-up. :func:`convert` writes a YAML subscriber file
as a bulk file.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NoReturn

from .compact import DEFAULT_CACHE, CompactDirectory
from .errors import SubscriberError
from .loader import _AKA_KEYS, _Entry, _RawInt, _read_yaml, subscribers_from_data
from .model import Subscriber

__all__ = ["convert", "load_bulk"]

_COMMENT: Final = b"#"


class _RepeatedKey(ValueError):
    """A JSON object with a key twice (the YAML loader refuses those too)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return result


def _decode(line: bytes) -> object:
    return json.loads(line, object_pairs_hook=_unique_pairs)


class _Loader:
    """Reads one bulk file into the structures of a :class:`CompactDirectory`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[bytes] = []
        self.numbers: array[int] = array("I")
        self.impis: dict[str, int] = {}
        self.impus: dict[str, int] = {}

    # -- naming ------------------------------------------------------------------------------------
    def label(self, position: int) -> str:
        """How messages name the subscriber at ``position``: its line."""
        return f"line {self.numbers[position]}"

    def fail(self, number: int, detail: str, key: str | None = None) -> NoReturn:
        raise SubscriberError(self.source, detail, index=None, key=key, entry=f"line {number}")

    # -- reading -----------------------------------------------------------------------------------
    def read(self, handle: Iterable[bytes]) -> None:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith(_COMMENT):
                continue
            position = len(self.lines)
            self.lines.append(line)
            self.numbers.append(number)
            data = self.parse(number, line)
            owners = _Owners(self)
            _Entry(self.source, position, data, owners, _Impis(self, position), self.label).build()
            owners.commit(position)
        if not self.lines:
            raise SubscriberError(self.source, "expected one JSON object per line, got no subscriber")

    def parse(self, number: int, line: bytes) -> object:
        try:
            data = _decode(line)
        except _RepeatedKey as exc:
            self.fail(number, "repeated key; expected each key once", key=exc.key)
        except UnicodeDecodeError:
            self.fail(number, "expected UTF-8 text")
        except ValueError as exc:  # json.JSONDecodeError; its message has a position, not the text
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not JSON"
            column = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            self.fail(number, f"expected a JSON object, got invalid JSON ({reason}{column})")
        return data

    # -- building ----------------------------------------------------------------------------------
    def build(self, position: int, line: bytes) -> Subscriber:
        """The subscriber of an accepted line, validated again alone (its cross-checks passed)."""
        entry = _Entry(self.source, position, _decode(line), {}, {}, self.label)
        return entry.build()

    def owner(self, position: int, aor: str) -> tuple[int, str, str]:
        """Who holds ``aor`` in the accepted line at ``position``: (position, IMPI, key path)."""
        recorded: dict[str, tuple[int, str, str]] = {}
        entry = _Entry(self.source, position, _decode(self.lines[position]), recorded, {}, self.label)
        entry.build()
        return recorded[aor]


class _Owners:
    """The owners of public identities, as :class:`~imscore.subscribers.loader._Entry` asks for
    them, kept as one position per identity; the line being checked is kept whole until it is
    accepted (:meth:`commit`)."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.current: dict[str, tuple[int, str, str]] = {}

    def get(self, aor: str, /) -> tuple[int, str, str] | None:
        found = self.current.get(aor)
        if found is not None:
            return found
        position = self.loader.impus.get(aor)
        return None if position is None else self.loader.owner(position, aor)

    def __setitem__(self, aor: str, owner: tuple[int, str, str], /) -> None:
        self.current[aor] = owner

    def setdefault(self, aor: str, owner: tuple[int, str, str], /) -> tuple[int, str, str]:
        return self.current.setdefault(aor, owner)

    def commit(self, position: int) -> None:
        impus = self.loader.impus
        for aor in self.current:
            impus.setdefault(aor, position)


class _Impis:
    """The IMPIs seen so far, as :class:`~imscore.subscribers.loader._Entry` asks for them."""

    def __init__(self, loader: _Loader, position: int) -> None:
        self.loader = loader
        self.position = position

    def setdefault(self, key: str, first: tuple[int, str], /) -> tuple[int, str]:
        position = self.loader.impis.setdefault(key, self.position)
        if position == self.position:
            return first
        data = _decode(self.loader.lines[position])
        assert isinstance(data, dict)  # an accepted line
        return position, str(data["impi"])


def load_bulk(path: str | os.PathLike[str], *, cache: int = DEFAULT_CACHE) -> CompactDirectory:
    """Read and validate a bulk subscriber file.

    :param path: the file; messages name it as given.
    :param cache: how many built subscribers the directory keeps.
    :raises SubscriberError: the file, the line, the key and what was expected.
    """
    source = os.fspath(path)
    loader = _Loader(source)
    try:
        with open(path, "rb") as handle:
            loader.read(handle)
    except OSError as exc:
        raise SubscriberError(source, f"cannot read the subscriber file: {exc.strerror}") from None
    return CompactDirectory(
        loader.lines,
        loader.numbers,
        loader.impis,
        loader.impus,
        loader.build,
        source=source,
        cache=cache,
    )


# --------------------------------------------------------------------------------------------------
# Converting


def _as_json(entry: dict[str, object]) -> dict[str, object]:
    """A validated YAML entry as JSON: hex fields and passwords YAML read as numbers back as text."""
    out = dict(entry)
    password = out.get("password")
    if isinstance(password, _RawInt):
        out["password"] = password.raw
    aka = out.get("aka")
    if isinstance(aka, dict):
        out["aka"] = {
            k: (v.raw if isinstance(v, _RawInt) and k in _AKA_KEYS else v) for k, v in aka.items()
        }
    return out


def convert(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> int:
    """Write the YAML subscriber file ``source`` as the bulk file ``target``.

    ``source`` is validated first (the same errors as at start-up), and ``target`` is read back and
    compared subscriber by subscriber before this returns.

    :returns: how many subscribers were written.
    :raises SubscriberError: when ``source`` is invalid or ``target`` cannot be written.
    """
    name = os.fspath(source)
    data = _read_yaml(Path(source), name)
    directory = subscribers_from_data(data, source=name)
    assert isinstance(data, dict)  # validated above
    entries = data["subscribers"]
    out_name = os.fspath(target)
    try:
        with open(target, "w", encoding="utf-8") as out:
            for entry in entries:
                out.write(json.dumps(_as_json(entry), ensure_ascii=False, separators=(",", ":")))
                out.write("\n")
    except OSError as exc:
        raise SubscriberError(out_name, f"cannot write the bulk file: {exc.strerror}") from None
    written = load_bulk(target)
    if list(written) != list(directory):
        raise SubscriberError(
            out_name, "the bulk file does not read back as the YAML file's subscribers"
        )
    return len(directory)
