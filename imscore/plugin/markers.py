"""The hook implementation marker plugins use."""

from __future__ import annotations

import pluggy

#: Marks a function or method as an implementation of an imscore hook: ``@hookimpl`` or
#: ``@hookimpl(tryfirst=True)``, ``@hookimpl(trylast=True)``, ``@hookimpl(wrapper=True)``.
hookimpl = pluggy.HookimplMarker("imscore")
