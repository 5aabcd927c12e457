"""Which build runs (imscore.build_info): the tox env says which it installed, the modules agree,
and ``imscore --version`` and the ready line say so."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imscore import build_info

#: set by tox: "pure" in the `tests` env, "compiled" in `tests-compiled`
EXPECTED = os.environ.get("IMSCORE_EXPECT_BUILD")


def test_the_build_tox_installed_is_the_one_that_runs() -> None:
    compiled = build_info.compiled_modules()
    if EXPECTED == "compiled":
        assert compiled == list(build_info.COMPILED_MODULES)
        assert build_info.describe() == (
            f"compiled: mypyc, {len(compiled)} of {len(build_info.COMPILED_MODULES)} modules"
        )
    elif EXPECTED == "pure":
        assert compiled == []
        assert build_info.describe() == "pure Python"
    else:  # a developer's own run: the description follows whatever was installed
        assert (build_info.describe() == "pure Python") == (not compiled)


def test_every_listed_module_exists_and_is_imported_from_its_package() -> None:
    for name in build_info.COMPILED_MODULES:
        module = importlib.import_module(name)
        assert module.__name__ == name
        assert module.__file__ is not None and "imscore" in module.__file__


def test_version_names_the_build(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "imscore", "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,  # not the checkout, whose sources would be imported instead
    ).stdout.strip()
    assert out == f"imscore 0.1.0 ({build_info.describe()})"


@pytest.mark.parametrize("name", ["imscore.sip.message"])
def test_a_compiled_module_still_has_its_python_source_beside_it(name: str) -> None:
    """The wheel keeps the sources (tracebacks, docs, a pure fallback by IMSCORE_PURE rebuild)."""
    module = importlib.import_module(name)
    assert module.__file__ is not None
    source = module.__file__.rsplit("/", 1)[0] + "/" + name.rsplit(".", 1)[1] + ".py"
    assert os.path.exists(source)
