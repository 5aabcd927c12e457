"""The YAML loader imscore reads its files with: PyYAML's safe loader, refusing repeated keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["UniqueKeyLoader", "YamlReadError", "read_yaml"]


class UniqueKeyLoader(yaml.SafeLoader):
    """``SafeLoader`` that rejects a key repeated in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: list[object] = []
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.append(key)
    return loader.construct_mapping(node, deep=True)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class YamlReadError(Exception):
    """A file could not be read as YAML; ``detail`` says why (the caller adds the file name)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def read_yaml(path: Path, loader: type[UniqueKeyLoader], what: str, *, quote_errors: bool) -> object:
    """Read and parse ``path`` with ``loader`` (a safe loader).

    :param what: how messages name the file (``"profile"``, ``"the subscriber file"``).
    :param quote_errors: whether a YAML error without a position may be quoted; a file that holds
        secrets passes ``False`` and only the error's type is named. Positioned errors never quote
        the file's text, only the problem and the line and column.
    :raises YamlReadError: naming what was wrong.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlReadError(f"cannot read {what}: no such file") from None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        raise YamlReadError(
            f"cannot read {what}: not UTF-8 text (byte {exc.start} is 0x{bad:02x})"
        ) from None
    except OSError as exc:
        raise YamlReadError(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            problem = f"{exc.problem} ({exc.context})"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise YamlReadError(f"{where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        shown = " ".join(str(exc).split()) if quote_errors else type(exc).__name__
        raise YamlReadError(f"invalid YAML: {shown}") from None
