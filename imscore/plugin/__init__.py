"""imscore's plugin layer: hook specs, the ``hookimpl`` marker and the plugin manager.

A plugin is a module or object with functions marked ``@hookimpl`` whose names are hooks of
:mod:`imscore.plugin.hookspecs`. Third-party plugins are found through the ``imscore`` entry-point
group.
"""

from .errors import PluginError
from .hookspecs import hookspec
from .manager import (
    BUILTIN_PLUGIN_NAME,
    DISABLE_AUTOLOAD_ENV,
    ENTRY_POINT_GROUP,
    TRACE_ENV,
    TRACE_LOGGER,
    ImsPluginManager,
    create_plugin_manager,
)
from .markers import hookimpl
from .types import (
    Binding,
    BindingDecision,
    BranchGroup,
    ForkPlan,
    NextHop,
    ProviderRegistry,
    ResolvedIdentity,
    Subscriber,
)

__all__ = [
    "BUILTIN_PLUGIN_NAME",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "TRACE_ENV",
    "TRACE_LOGGER",
    "Binding",
    "BindingDecision",
    "BranchGroup",
    "ForkPlan",
    "ImsPluginManager",
    "NextHop",
    "PluginError",
    "ProviderRegistry",
    "ResolvedIdentity",
    "Subscriber",
    "create_plugin_manager",
    "hookimpl",
    "hookspec",
]
