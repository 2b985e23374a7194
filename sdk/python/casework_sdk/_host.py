"""Where host calls go: the component's imports, or a fake installed by tests."""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

# Inside a component only modules imported while componentize-py snapshots the app
# exist at run time (there is no filesystem to import from later), so the generated
# bindings are imported here, at import time, not when first used.
IN_COMPONENT = sys.platform == "wasi"
if IN_COMPONENT:
    from componentize_py_types import Err as _Err
    from wit_world.exports import actions as _wit_actions
    from wit_world.imports import clock as _clock
    from wit_world.imports import config as _config
    from wit_world.imports import http as _http
    from wit_world.imports import log as _log
    from wit_world.imports import random as _random
    from wit_world.imports import secrets as _secrets

_override: Optional[Any] = None
_wasm: Optional[Any] = None


def install(fake: Optional[Any]) -> None:
    """Routes host calls to ``fake`` (``None``: back to the real host)."""
    global _override
    _override = fake


def backend() -> Any:
    global _wasm
    if _override is not None:
        return _override
    if _wasm is None:
        if not IN_COMPONENT:
            raise RuntimeError(
                "no Casework host here: outside a component, install "
                "casework_sdk.testing.FakeHost() first"
            )
        _wasm = _WasmHost()
    return _wasm


class _WasmHost:
    """The `casework:plugin@0.1.0` imports, as the generated bindings expose them."""

    def __init__(self) -> None:
        self._clock, self._config, self._http = _clock, _config, _http
        self._log, self._random, self._secrets = _log, _random, _secrets

    def config_get(self, key: str) -> Optional[str]:
        return self._config.get(key)

    def secret_get(self, name: str) -> str:
        from . import PluginError

        try:
            return self._secrets.get(name)
        except _Err as e:
            kind = e.value.name
        if kind == "NOT_GRANTED":
            raise PluginError("secret_not_granted", f"secret `{name}` is not granted to this plugin")
        if kind == "NOT_FOUND":
            raise PluginError("secret_missing", f"secret `{name}` is granted but not set")
        raise PluginError("secret_store_unavailable", f"secret `{name}`: store unavailable", True)

    def log(self, level: str, message: str) -> None:
        self._log.log(getattr(self._log.Level, level.upper()), message)

    def now_ms(self) -> int:
        return self._clock.now_ms()

    def random_bytes(self, n: int) -> bytes:
        return bytes(self._random.get_bytes(n))

    def http_send(
        self, method: str, url: str, headers: List[Tuple[str, str]], body: bytes
    ) -> Tuple[int, List[Tuple[str, str]], bytes]:
        from .http import HttpError

        w = self._http
        request = w.Request(getattr(w.Method, method.upper()), url, list(headers), bytes(body))
        try:
            r = w.send(request)
        except _Err as e:
            v = e.value
            if isinstance(v, w.HttpError_Denied):
                raise HttpError("denied", v.value) from None
            if isinstance(v, w.HttpError_InvalidRequest):
                raise HttpError("invalid_request", v.value) from None
            if isinstance(v, w.HttpError_Timeout):
                raise HttpError("timeout") from None
            if isinstance(v, w.HttpError_Connection):
                raise HttpError("connection", v.value) from None
            raise HttpError("response_too_large") from None
        return r.status, list(r.headers), bytes(r.body)


def plugin_error(code: str, message: str, retryable: bool) -> Any:
    """The WIT `plugin-error` raised as the `err` of `invoke`'s result."""
    return _Err(_wit_actions.PluginError(code, message, retryable))


def action_info(name: str, doc: str, input_schema: str, output_schema: str) -> Any:
    return _wit_actions.ActionInfo(name, doc, input_schema, output_schema)
