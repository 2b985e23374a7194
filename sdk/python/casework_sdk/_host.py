"""Where host calls go: the component's imports, or a fake installed by tests."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

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
        try:
            _wasm = _WasmHost()
        except ImportError:
            raise RuntimeError(
                "no Casework host here: outside a component, install "
                "casework_sdk.testing.FakeHost() first"
            ) from None
    return _wasm


class _WasmHost:
    """The `casework:plugin@0.1.0` imports, as the generated bindings expose them."""

    def __init__(self) -> None:
        import componentize_py_runtime  # noqa: F401  only inside a component
        from wit_world.imports import clock, config, http, log, random, secrets

        self._clock, self._config, self._http = clock, config, http
        self._log, self._random, self._secrets = log, random, secrets

    def config_get(self, key: str) -> Optional[str]:
        return self._config.get(key)

    def secret_get(self, name: str) -> str:
        from componentize_py_types import Err

        from . import PluginError

        try:
            return self._secrets.get(name)
        except Err as e:
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
        from componentize_py_types import Err

        from .http import HttpError

        w = self._http
        request = w.Request(getattr(w.Method, method.upper()), url, list(headers), bytes(body))
        try:
            r = w.send(request)
        except Err as e:
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
