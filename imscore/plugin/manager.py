"""Creating imscore's plugin manager: specs, builtin defaults, entry points, tracing and guards."""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import logging
import os
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import CodeType, FrameType, ModuleType
from typing import Any, Final, NamedTuple

import pluggy
from pluggy import HookCaller, HookImpl, Result

from . import builtin, hookspecs
from .errors import PluginError
from .types import BindingDecision, NextHop, ResolvedIdentity

PROJECT_NAME = "imscore"
#: Entry-point group scanned for third-party plugins.
ENTRY_POINT_GROUP = "imscore"
#: Name the builtin defaults are registered under.
BUILTIN_PLUGIN_NAME = "builtin"
#: Set to ``1`` to skip loading plugins from the ``imscore`` entry-point group.
DISABLE_AUTOLOAD_ENV = "IMSCORE_DISABLE_PLUGIN_AUTOLOAD"
#: Set to ``1`` to log every hook call to :data:`TRACE_LOGGER`.
TRACE_ENV = "IMSCORE_TRACE_HOOKS"
#: Logger receiving one DEBUG record before and one after each hook call when tracing is on.
TRACE_LOGGER = "imscore.plugin.trace"

_TRUE = frozenset({"1", "true", "yes", "on"})

#: result types that are never awaitable, checked by identity before the slower inspection: plain
#: values, and the decisions of :mod:`.types` (frozen, without ``__await__``; a subclass is inspected)
_PLAIN_RESULTS: frozenset[type] = frozenset(
    {type(None), str, int, float, bool, bytes, tuple, dict, BindingDecision, NextHop, ResolvedIdentity}
)


def _awaitable(value: object) -> bool:
    """:func:`inspect.isawaitable`, without its abstract-class check for the plain types."""
    return type(value) not in _PLAIN_RESULTS and inspect.isawaitable(value)


_short = reprlib.Repr()
_short.maxstring = 120
_short.maxother = 120


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _is_firstresult(hook: HookCaller) -> bool:
    return hook.spec is not None and bool(hook.spec.opts.get("firstresult", False))


def _sync_message(hook: HookCaller, plugin: str, what: str) -> str:
    kind = "decision hooks" if _is_firstresult(hook) else "imscore hooks"
    return (
        f"hook {hook.name} in {plugin} {what}; {kind} are synchronous (pluggy cannot await)"
        " — do the I/O in a provider"
    )


class ImsPluginManager(pluggy.PluginManager):
    """A :class:`pluggy.PluginManager` for the ``imscore`` project that enforces imscore's conventions.

    * registration errors (and ``async def`` hook implementations) raise :class:`PluginError`;
    * :meth:`check_pending` raises :class:`PluginError` naming the plugin and the unknown hook;
    * a hook call that produces a coroutine raises :class:`PluginError` (the coroutine is closed);
    * entry-point loading failures raise :class:`PluginError` naming the entry point.

    Use :func:`create_plugin_manager` rather than instantiating this directly.
    """

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self._inner_hookexec = self._guarded(self._inner_hookexec)
        #: the executor a direct call stands for (tracing or monitoring replaces it: no direct calls)
        self._plain_hookexec = self._inner_hookexec
        #: per hook name, how a call may skip pluggy's machinery (:class:`_DirectHookCaller`);
        #: emptied whenever implementations or specs change
        self._direct: dict[str, _Direct | None] = {}
        #: per hook name, what :meth:`only_builtin` found (tracing aside); emptied with _direct
        self._only: dict[str, bool] = {}

    def add_hookspecs(self, module_or_class: ModuleType | type) -> None:
        super().add_hookspecs(module_or_class)
        self._hook_callers_changed()

    def unregister(self, plugin: object | None = None, name: str | None = None) -> object | None:
        try:
            return super().unregister(plugin, name)
        finally:
            self._hook_callers_changed()

    def _hook_callers_changed(self) -> None:
        """Forget every direct call; every hook caller may take one (:class:`_DirectHookCaller`)."""
        self._direct.clear()
        self._only.clear()
        for caller in vars(self.hook).values():
            if type(caller) is HookCaller:
                caller.__class__ = _DirectHookCaller

    def only_builtin(self, name: str) -> bool:
        """Whether hook ``name``'s only implementation is the builtin default (not a wrapper) and
        its calls are plain (no tracing or monitoring): what the builtin answers is then the
        answer, and a caller that knows it may take it without the call (as
        :mod:`imscore.server.fastreg` does). Remembered per hook until a plugin or spec is
        registered or unregistered."""
        if self._inner_hookexec is not self._plain_hookexec:
            return False
        known = self._only.get(name)
        if known is None:
            known = self._only[name] = self._builtin_alone(name)
        return known

    def _builtin_alone(self, name: str) -> bool:
        """:meth:`only_builtin`, found again (tracing aside)."""
        caller = getattr(self.hook, name, None)
        if caller is None:
            return False
        impls = caller._hookimpls
        if len(impls) != 1:
            return False
        impl = impls[0]
        return impl.plugin_name == BUILTIN_PLUGIN_NAME and not (impl.wrapper or impl.hookwrapper)

    def _direct_for(self, caller: HookCaller) -> _Direct | None:
        """How a call of ``caller`` can go straight to its implementations, or ``None``: when
        there is at least one, none is a wrapper or takes an argument with a default, and the spec
        has no argument defaults and is not historic."""
        impls = tuple(caller._hookimpls)
        spec = caller.spec
        if (
            not impls
            or spec is None
            or spec.kwargdefaults
            or caller.is_historic()
            or any(impl.wrapper or impl.hookwrapper or impl.kwargnames for impl in impls)
        ):
            return None
        argnames = tuple(spec.argnames)
        calls = tuple(
            (impl.function, None if tuple(impl.argnames) == argnames else tuple(impl.argnames))
            for impl in reversed(impls)  # pluggy's order: the last registered first
        )
        return _Direct(calls, argnames, bool(spec.opts.get("firstresult")), impls)

    # --- registration --------------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions) and return its name.

        :raises PluginError: a hook implementation does not fit its spec, or is ``async def``.
        """
        shown = name or self.get_canonical_name(plugin)
        try:
            plugin_name = super().register(plugin, name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {shown!r} cannot be registered: {exc}", plugin=shown) from exc
        finally:
            self._hook_callers_changed()
        if plugin_name is None:  # blocked
            return None
        for hook in self.get_hookcallers(plugin) or ():
            if not hook.has_spec():
                continue  # an unknown hook: check_pending() reports it
            for impl in hook.get_hookimpls():
                function = impl.function
                if impl.plugin is plugin and (
                    inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
                ):
                    self.unregister(plugin)
                    raise PluginError(
                        _sync_message(
                            hook, f"plugin {plugin_name!r}", "is async def and returns a coroutine"
                        ),
                        plugin=plugin_name,
                        hook=hook.name,
                    )
        return plugin_name

    def check_pending(self) -> None:
        """Verify that every hook implementation matches a hook spec.

        :raises PluginError: naming the first plugin with an implementation of an unknown hook (for
            example a misspelt ``ims_*`` name), with the closest known hook names as a hint.
        """
        callers: dict[str, HookCaller] = {
            name: caller for name, caller in vars(self.hook).items() if not name.startswith("_")
        }
        known = sorted(name for name, caller in callers.items() if caller.has_spec())
        for name, caller in callers.items():
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, known, n=3)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise PluginError(
                    f"plugin {impl.plugin_name!r} implements unknown hook {name!r}{hint}",
                    plugin=impl.plugin_name,
                    hook=name,
                )

    def load_setuptools_entrypoints(self, group: str, name: str | None = None) -> int:
        """Load and register the plugins of entry-point ``group`` (only ``name`` if given).

        An entry point whose name is already registered or blocked is skipped.

        :returns: how many plugins this call registered.
        :raises PluginError: naming the entry point and its distribution if it cannot be imported or
            registered.
        """
        count = 0
        for ep in importlib.metadata.entry_points(group=group):
            if (name is not None and ep.name != name) or self.get_plugin(ep.name) is not None:
                continue
            if self.is_blocked(ep.name):
                continue
            origin = f"entry point {ep.name} = {ep.value}"
            if ep.dist is not None:
                origin += f" of {ep.dist.name} {ep.dist.version}"
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"cannot load plugin {origin}: {exc!r}", plugin=ep.name) from exc
            self.register(plugin, name=ep.name)
            count += 1
        return count

    # --- call-time guard and tracing -----------------------------------------------------------

    def _guarded(self, inner: Callable[..., object]) -> Callable[..., object]:
        """``inner`` (pluggy's hook executor) with the check that no implementation returned an
        awaitable. Hooks run on the hot path (the binding policy for every REGISTER), so this is
        done without :meth:`add_hookcall_monitoring`, whose :class:`~pluggy.Result` wrapper per call
        cost more than the hook itself; a Result is built only for a result that fails the check."""

        def guarded_hookexec(
            hook_name: str,
            impls: Sequence[HookImpl],
            kwargs: Mapping[str, object],
            firstresult: bool,
        ) -> object:
            result = inner(hook_name, impls, kwargs, firstresult)
            if type(result) in _PLAIN_RESULTS:  # None, a string...: nothing to await
                return result
            values = result if isinstance(result, list) else (result,)
            if any(_awaitable(value) for value in values):
                outcome: Result[object] = Result(result, None)
                self._reject_coroutine_results(outcome, hook_name, impls, kwargs)
                return outcome.get_result()
            return result

        return guarded_hookexec

    def _reject_coroutine_results(
        self,
        outcome: Result[object],
        hook_name: str,
        impls: Sequence[HookImpl],
        kwargs: Mapping[str, object],
    ) -> None:
        if outcome.exception is not None:
            return
        hook: HookCaller | None = getattr(self.hook, hook_name, None)
        result = outcome.get_result()
        firstresult = hook is not None and _is_firstresult(hook)
        values: list[object] = [result] if firstresult or not isinstance(result, list) else result
        awaitables = [v for v in values if inspect.isawaitable(v)]
        if not awaitables or hook is None:
            return
        culprit = _find_culprit(awaitables[0], impls)  # before closing: needs the coroutine's frame
        for value in awaitables:
            if inspect.iscoroutine(value):
                value.close()  # no "coroutine was never awaited" warning on top of our error
        what = "returned a coroutine" if inspect.iscoroutine(awaitables[0]) else "returned an awaitable"
        outcome.force_exception(
            PluginError(_sync_message(hook, culprit, what), plugin=culprit, hook=hook_name)
        )

    def enable_hook_tracing(self, logger: logging.Logger | None = None) -> Callable[[], None]:
        """Log every hook call: a DEBUG record with the arguments and the plugins asked (in call
        order) before it, and one with the result or the exception after it.

        :param logger: where to log; :data:`TRACE_LOGGER` by default.
        :returns: a function that turns tracing off again.
        """
        log = logger or logging.getLogger(TRACE_LOGGER)

        def before(hook_name: str, impls: Sequence[HookImpl], kwargs: Mapping[str, object]) -> None:
            if log.isEnabledFor(logging.DEBUG):
                args = ", ".join(f"{k}={_short.repr(v)}" for k, v in kwargs.items())
                order = ", ".join(impl.plugin_name for impl in reversed(impls))
                log.debug("call %s(%s) plugins=[%s]", hook_name, args, order)

        def after(
            outcome: Result[object],
            hook_name: str,
            impls: Sequence[HookImpl],
            kwargs: Mapping[str, object],
        ) -> None:
            if not log.isEnabledFor(logging.DEBUG):
                return
            if outcome.exception is not None:
                log.debug("%s raised %r", hook_name, outcome.exception)
            else:
                log.debug("%s returned %s", hook_name, _short.repr(outcome.get_result()))

        return self.add_hookcall_monitoring(before, after)


class _Direct(NamedTuple):
    """A hook whose implementations are all plain: each function in call order with the arguments
    it takes (``None``: the spec's, in the spec's order), the spec's arguments, whether the hook is
    ``firstresult``, and the :class:`~pluggy.HookImpl` objects as pluggy holds them (for error
    messages)."""

    calls: tuple[tuple[Callable[..., object], tuple[str, ...] | None], ...]
    argnames: tuple[str, ...]
    firstresult: bool
    impls: tuple[HookImpl, ...]


class _DirectHookCaller(HookCaller):
    """A :class:`~pluggy.HookCaller` that calls plain implementations without pluggy's machinery.

    Most hooks have only the builtin default, or the builtin and a plugin or two that answer for
    their own names, and some run for every request. When no implementation of a hook is a wrapper
    or takes an argument with a default, its spec has no argument defaults, the call names every
    argument of the spec and no tracing or monitoring is on, the call goes straight to the
    functions, in pluggy's order (the last registered first), with the arguments each names, and
    the result is what pluggy would return: for a ``firstresult`` hook the first value that is not
    ``None`` (the rest are not asked), else a list of the values that are not ``None``. An
    exception of an implementation propagates as it does through pluggy. Anything else (a
    wrapper, a missing argument, tracing) goes through :meth:`HookCaller.__call__` as before; an
    awaitable result is refused with the same :class:`PluginError`.
    """

    __slots__ = ()

    def __call__(self, **kwargs: object) -> Any:
        pm: ImsPluginManager = self._hookexec.__self__  # type: ignore[attr-defined]
        direct = pm._direct.get(self.name, _UNKNOWN)
        if direct is _UNKNOWN:
            direct = pm._direct[self.name] = pm._direct_for(self)
        if direct is None or pm._inner_hookexec is not pm._plain_hookexec:
            return super().__call__(**kwargs)
        assert isinstance(direct, _Direct)
        try:
            args = [kwargs[name] for name in direct.argnames]
        except KeyError:  # pluggy's own call warns and says which argument is missing
            return super().__call__(**kwargs)
        if direct.firstresult:
            value: object = None
            for function, names in direct.calls:
                value = function(*(args if names is None else [kwargs[n] for n in names]))
                if value is not None:
                    break
            if type(value) not in _PLAIN_RESULTS and _awaitable(value):
                outcome: Result[object] = Result(value, None)
                pm._reject_coroutine_results(outcome, self.name, list(direct.impls), kwargs)
                return outcome.get_result()
            return value
        values: list[object] = []
        for function, names in direct.calls:
            value = function(*(args if names is None else [kwargs[n] for n in names]))
            if value is not None:
                values.append(value)
        if any(type(value) not in _PLAIN_RESULTS and _awaitable(value) for value in values):
            outcome = Result(values, None)
            pm._reject_coroutine_results(outcome, self.name, list(direct.impls), kwargs)
            return outcome.get_result()
        return values


_UNKNOWN: Final = object()


def _find_culprit(value: object, impls: Sequence[HookImpl]) -> str:
    """Name the plugin whose implementation produced the awaitable ``value``, as well as we can."""
    candidates = [impl for impl in reversed(impls) if not (impl.wrapper or impl.hookwrapper)]
    code: CodeType | None = getattr(value, "cr_code", None)
    if code is not None:
        for impl in candidates:
            if getattr(impl.function, "__code__", None) is code:
                return f"plugin {impl.plugin_name!r}"
        # A sync implementation returning a coroutine of a helper from the same module and class.
        frame: FrameType | None = getattr(value, "cr_frame", None)
        module = frame.f_globals.get("__name__") if frame is not None else None
        owner = code.co_qualname.rpartition(".")[0]
        matches = [
            impl
            for impl in candidates
            if getattr(impl.function, "__module__", None) == module
            and getattr(impl.function, "__qualname__", "").rpartition(".")[0] == owner
        ]
        if len(matches) == 1:
            return f"plugin {matches[0].plugin_name!r}"
    names = ", ".join(repr(impl.plugin_name) for impl in candidates)
    return f"one of the plugins {names}"


def create_plugin_manager(
    *,
    autoload: bool | None = None,
    trace: bool | None = None,
    extra_plugins: Iterable[object] = (),
) -> ImsPluginManager:
    """Build the plugin manager the server, the lab and the tests use.

    Steps, in order: add the hook specs of :mod:`imscore.plugin.hookspecs`; register the builtin
    defaults (:mod:`imscore.plugin.builtin`, all ``trylast``) as ``"builtin"``; load the plugins of
    the ``imscore`` entry-point group; register ``extra_plugins`` (so they are asked before
    entry-point plugins); turn on tracing; call :meth:`~ImsPluginManager.check_pending`.

    :param autoload: load entry-point plugins; ``None`` means "unless the environment variable
        ``IMSCORE_DISABLE_PLUGIN_AUTOLOAD`` is set to ``1``".
    :param trace: log every hook call to the ``imscore.plugin.trace`` logger at DEBUG level;
        ``None`` means "if the environment variable ``IMSCORE_TRACE_HOOKS`` is set to ``1``".
    :param extra_plugins: further plugin modules or objects to register, e.g. from a profile.
    :raises PluginError: a plugin cannot be loaded or registered, is async, or implements an
        unknown hook.
    """
    pm = ImsPluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name=BUILTIN_PLUGIN_NAME)
    if autoload is None:
        autoload = not _env_flag(DISABLE_AUTOLOAD_ENV)
    if autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin)
    if trace is None:
        trace = _env_flag(TRACE_ENV)
    if trace:
        pm.enable_hook_tracing()
    pm.check_pending()
    return pm
