"""Casework plugins in Python: typed actions over the `casework:plugin@0.1.0` world.

A plugin module creates one :class:`Plugin`, registers actions on it and exposes
``Actions = plugin.exports()`` for componentize-py::

    from casework_sdk import Plugin, PluginError, http, secrets, log

    plugin = Plugin()

    @plugin.action(
        "greet",
        doc="Says hello.",
        input_schema={"type": "object", "properties": {"name": {"type": "string"}},
                      "required": ["name"], "additionalProperties": False},
        output_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    )
    def greet(input, ctx):
        return {"text": f"hello {input['name']}"}

    Actions = plugin.exports()

Inside the component the host functions go to the real host; anywhere else
(``python3 -m unittest``) they go to :class:`casework_sdk.testing.FakeHost`.
Nothing here needs a package outside the standard library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from . import _host
from ._schema import validate as _validate

__all__ = [
    "Plugin",
    "PluginError",
    "retryable",
    "permanent",
    "invalid_input",
    "Context",
    "Secret",
    "config",
    "secrets",
    "http",
    "log",
    "clock",
    "random",
]


class PluginError(Exception):
    """An action's failure as the engine sees it.

    ``code`` is stable ``snake_case`` (workflows branch on it), ``message`` is for
    humans and lands in the journal: never put secrets, codes or tokens in it.
    """

    def __init__(self, code: str, message: str, retryable: bool = False):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

    def __repr__(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        return f"PluginError({kind} {self.code}: {self.message})"


def retryable(code: str, message: str) -> PluginError:
    """A failure the same call with the same idempotency key may fix (timeouts, 429, 5xx)."""
    return PluginError(code, message, True)


def permanent(code: str, message: str) -> PluginError:
    """A failure a retry cannot fix."""
    return PluginError(code, message, False)


def invalid_input(message: str) -> PluginError:
    """Input the action rejects after the schema check."""
    return PluginError("invalid_input", message, False)


@dataclass(frozen=True)
class Context:
    """Where a call sits in the engine (same idempotency key on every retry)."""

    instance_id: str = "inst-1"
    step_id: str = "step-1"
    attempt: int = 1
    idempotency_key: str = "inst-1:step-1"


@dataclass
class _Action:
    name: str
    doc: str
    input_schema: Dict[str, Any]
    output_schema: Dict[str, Any]
    fn: Callable[[Any, Context], Any]


class Plugin:
    """A set of actions; ``exports()`` gives the class componentize-py calls."""

    def __init__(self) -> None:
        self._actions: Dict[str, _Action] = {}

    def action(
        self,
        name: str,
        *,
        doc: str,
        input_schema: Dict[str, Any],
        output_schema: Dict[str, Any],
    ) -> Callable[[Callable[[Any, Context], Any]], Callable[[Any, Context], Any]]:
        """Registers ``fn(input, ctx) -> output`` as action ``name``.

        ``input`` is the decoded JSON, already checked against ``input_schema``
        (a mismatch is ``invalid_input`` naming the field, never quoting the
        value); the return value is encoded as JSON.
        """

        def register(fn: Callable[[Any, Context], Any]) -> Callable[[Any, Context], Any]:
            if name in self._actions:
                raise ValueError(f"action `{name}` registered twice")
            self._actions[name] = _Action(name, doc, input_schema, output_schema, fn)
            return fn

        return register

    def names(self) -> List[str]:
        return list(self._actions)

    def describe(self) -> List[Dict[str, str]]:
        """What `describe()` returns, as plain dicts."""
        return [
            {
                "name": a.name,
                "doc": a.doc,
                "input_schema": json.dumps(a.input_schema),
                "output_schema": json.dumps(a.output_schema),
            }
            for a in self._actions.values()
        ]

    def call(self, action: str, input_json: str, ctx: Context) -> str:
        """Runs one call from JSON to JSON, raising :class:`PluginError`."""
        found = self._actions.get(action)
        if found is None:
            raise PluginError("unknown_action", f"no action named `{action}`")
        try:
            value = json.loads(input_json)
        except ValueError as e:
            raise PluginError("invalid_input", f"the input is not JSON: {e.msg}") from None
        problem = _validate(value, found.input_schema)
        if problem is not None:
            raise PluginError("invalid_input", problem)
        out = found.fn(value, ctx)
        return json.dumps(out, separators=(",", ":"))

    def exports(self) -> type:
        """The class componentize-py instantiates for the `actions` export."""
        plugin = self

        class Actions:
            def describe(self):  # type: ignore[no-untyped-def]
                return [
                    _host.action_info(d["name"], d["doc"], d["input_schema"], d["output_schema"])
                    for d in plugin.describe()
                ]

            def invoke(self, action, input, ctx):  # type: ignore[no-untyped-def]
                context = Context(ctx.instance_id, ctx.step_id, ctx.attempt, ctx.idempotency_key)
                try:
                    return plugin.call(action, input, context)
                except PluginError as e:
                    raise _host.plugin_error(e.code, e.message, e.retryable)
                except Exception as e:  # an uncaught bug: permanent
                    raise _host.plugin_error(
                        "plugin_failed", f"{type(e).__name__}: {e}"[:500], False
                    )

        return Actions


class Secret:
    """A secret value; ``repr``/``str`` show only its name, ``expose()`` the value."""

    __slots__ = ("name", "_value")

    def __init__(self, name: str, value: str):
        self.name = name
        self._value = value

    def expose(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name})"

    __str__ = __repr__


class config:  # noqa: N801 - a namespace, mirrors the Rust SDK's module
    @staticmethod
    def get(key: str) -> Optional[str]:
        return _host.backend().config_get(key)

    @staticmethod
    def get_or(key: str, default: str) -> str:
        value = _host.backend().config_get(key)
        return default if value is None else value

    @staticmethod
    def require(key: str) -> str:
        value = _host.backend().config_get(key)
        if value is None:
            raise PluginError("config_missing", f"config key `{key}` is not set")
        return value


class secrets:  # noqa: N801
    @staticmethod
    def get(name: str) -> Secret:
        """The granted secret ``name``; ``secret_not_granted`` / ``secret_missing`` /
        ``secret_store_unavailable`` (retryable) otherwise."""
        return Secret(name, _host.backend().secret_get(name))


class log:  # noqa: N801
    @staticmethod
    def trace(message: str) -> None:
        _host.backend().log("trace", message)

    @staticmethod
    def debug(message: str) -> None:
        _host.backend().log("debug", message)

    @staticmethod
    def info(message: str) -> None:
        _host.backend().log("info", message)

    @staticmethod
    def warn(message: str) -> None:
        _host.backend().log("warn", message)

    @staticmethod
    def error(message: str) -> None:
        _host.backend().log("error", message)


class clock:  # noqa: N801
    @staticmethod
    def now_ms() -> int:
        return _host.backend().now_ms()


class random:  # noqa: N801
    @staticmethod
    def bytes(n: int) -> bytes:
        return _host.backend().random_bytes(n)


from . import http  # noqa: E402  (needs PluginError defined above)
