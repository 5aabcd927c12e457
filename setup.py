"""Build hook: compile imscore's hot modules with mypyc when possible, else a pure-Python install.

Everything else about the package is in ``pyproject.toml``. The compiled build is made when all of
these hold: ``IMSCORE_PURE`` is unset (or ``0``); it is not an editable install (the sources you edit
must be what runs); a C compiler is found; mypyc imports (``mypy`` is a build requirement). Otherwise
the modules stay plain Python, and the install says why on stderr. ``imscore --version`` tells which
build runs. The list of modules is :data:`imscore.build_info.COMPILED_MODULES`.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _pure_reason() -> str | None:
    """Why this build stays pure Python, or ``None`` to compile."""
    if os.environ.get("IMSCORE_PURE", "").strip() not in ("", "0"):
        return "IMSCORE_PURE is set"
    if any(command in sys.argv for command in ("editable_wheel", "develop")):
        return "an editable install runs the sources as they are edited"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} not found)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    return None


def _extensions() -> list[object]:
    reason = _pure_reason()
    if reason is not None:
        print(f"imscore: pure-Python build ({reason})", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    info = runpy.run_path(str(HERE / "imscore" / "build_info.py"))
    paths = [name.replace(".", "/") + ".py" for name in info["COMPILED_MODULES"]]
    print(f"imscore: compiling {len(paths)} modules with mypyc", file=sys.stderr)
    try:
        return list(mypycify(paths, opt_level="3", group_name="imscore"))
    except SystemExit as failed:  # mypyc's type check failed (its errors are printed above)
        if os.environ.get("IMSCORE_PURE", "").strip() == "0":  # a compiled build was asked for
            raise
        print(
            f"imscore: pure-Python build (mypyc could not compile: exit status {failed.code}; "
            "IMSCORE_PURE=0 makes that an error)",
            file=sys.stderr,
        )
        return []


setup(ext_modules=_extensions())
