"""Sphinx configuration for the imscore documentation."""

import sys
from pathlib import Path

# Make the package importable for autodoc without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "imscore"
author = "imscore contributors"
copyright = "imscore contributors"

# The docstrings are reStructuredText (``:param x:``), not Google or NumPy style, so napoleon is not
# used: it would read a property docstring such as "The address of record form: scheme, ..." as
# "type: description" and print the first half as the property's type.
extensions = [
    "sphinx.ext.autodoc",
]

exclude_patterns = ["_build"]

autodoc_member_order = "bysource"

# furo, widened on wide windows (docs/_static/imscore.css), so the lab's tables and ladders are seen
# whole; its own "On this page" sidebar replaces the pages' ``.. contents::`` (see _drop_contents)
html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["imscore.css"]
html_title = "imscore documentation"


def _resolve_reexport(app, env, node, contnode):
    """Resolve a Python reference to a name re-exported by :mod:`imscore.sip`.

    The API reference documents each object in the submodule that defines it
    (``imscore.sip.errors.SipError``), while docstrings and pages also name it as users import it
    (``imscore.sip.SipError``) or bare (``SipError``, from another submodule). Sphinx calls this only
    for references it could not resolve; it retries them under the defining submodule.
    """
    if node.get("refdomain") != "py":
        return None
    import imscore.sip

    target = node["reftarget"]
    head, _, rest = target.removeprefix("imscore.sip.").partition(".")
    if head not in imscore.sip.__all__:
        return None
    module = getattr(getattr(imscore.sip, head), "__module__", "")
    if not module.startswith("imscore.sip."):
        return None
    canonical = f"{module}.{head}" + (f".{rest}" if rest else "")
    if canonical == target:
        return None
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
    )


def _drop_contents(app, doctree):
    """Remove ``.. contents::`` tables: furo shows each page's contents in its sidebar, and flags
    an in-page one as an error."""
    from docutils import nodes

    for topic in list(doctree.findall(nodes.topic)):
        if "contents" in topic["classes"]:
            topic.parent.remove(topic)


def setup(app):
    app.connect("missing-reference", _resolve_reexport)
    app.connect("doctree-read", _drop_contents)
