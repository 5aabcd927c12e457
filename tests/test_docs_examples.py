"""The examples in the documentation run and print what the pages say they print."""

from __future__ import annotations

import doctest

import pytest
from conftest import REPO_ROOT

PAGES = ["docs/sip-core.rst", "docs/plugins.rst"]


@pytest.mark.parametrize("page", PAGES)
def test_documentation_examples(page: str) -> None:
    result = doctest.testfile(
        str(REPO_ROOT / page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted > 0, f"{page} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {page} failed"
