"""The one exception the plugin layer raises."""

from __future__ import annotations


class PluginError(Exception):
    """A plugin could not be loaded, registered or called the way imscore's hook conventions require.

    :ivar plugin: the name of the offending plugin, when known.
    :ivar hook: the name of the offending hook, when known.
    """

    def __init__(self, message: str, *, plugin: str | None = None, hook: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook
