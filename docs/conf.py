"""Sphinx configuration for the imscore documentation."""

import sys
from pathlib import Path

# Make the package importable for autodoc without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "imscore"
author = "imscore contributors"
copyright = "imscore contributors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

exclude_patterns = ["_build"]

autodoc_member_order = "bysource"

html_theme = "alabaster"
