"""A fake host for unit tests that run in plain CPython, no WebAssembly::

    import unittest
    from casework_sdk.testing import FakeHost
    import app  # the plugin module

    class Test(unittest.TestCase):
        def test_greets(self):
            host = FakeHost().config("greeting", "hi").secret("api_key", "k_test")
            host.respond("get", "https://api.example.com/x", 200, {"ok": True})
            self.assertEqual(host.invoke(app.plugin, "greet", {"name": "Ann"}), {...})

It behaves like the engine's host: secrets not given are ``secret_not_granted``
(``grant(manifest)`` checks names against ``plugin.toml`` too), a request with no
canned answer is ``http_denied`` naming it, canned answers per method and URL are
served in order (the last one repeats), the clock is pinned to 2024-01-01T00:00:00Z.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from . import Context, Plugin, PluginError, _host
from .http import HttpError


class SentRequest:
    def __init__(self, method: str, url: str, headers: List[Tuple[str, str]], body: bytes):
        self.method, self.url, self.headers, self.body = method, url, headers, body

    def header(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class FakeHost:
    """Installs itself as the host on creation; ``close()`` (or ``with``) removes it."""

    def __init__(self) -> None:
        self._config: Dict[str, str] = {}
        self._secrets: Dict[str, str] = {}
        self._missing: set = set()
        self._answers: Dict[Tuple[str, str], List[Any]] = {}
        self.requests: List[SentRequest] = []
        self.logs: List[Tuple[str, str]] = []
        self._now_ms = 1_704_067_200_000
        _host.install(self)

    def close(self) -> None:
        _host.install(None)

    def __enter__(self) -> "FakeHost":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # set-up
    def config(self, key: str, value: str) -> "FakeHost":
        self._config[key] = value
        return self

    def config_from_manifest(self, path: str) -> "FakeHost":
        """Loads the ``[config]`` table of a ``plugin.toml``."""
        manifest = _read_toml(path)
        self._config.update(manifest.get("config", {}))
        return self

    def secret(self, name: str, value: str) -> "FakeHost":
        self._secrets[name] = value
        return self

    def missing_secret(self, name: str) -> "FakeHost":
        """Granted but not stored: ``secret_missing``."""
        self._missing.add(name)
        return self

    def respond(self, method: str, url: str, status: int, body: Any = b"",
                headers: Optional[List[Tuple[str, str]]] = None) -> "FakeHost":
        """A canned answer; a non-bytes ``body`` is sent as JSON."""
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        self._answers.setdefault((method.lower(), url), []).append((status, headers or [], body))
        return self

    def fail(self, method: str, url: str, kind: str, detail: str = "") -> "FakeHost":
        """A transport failure: ``timeout``, ``connection``, ``denied``, ..."""
        self._answers.setdefault((method.lower(), url), []).append(HttpError(kind, detail))
        return self

    def set_now_ms(self, ms: int) -> "FakeHost":
        self._now_ms = ms
        return self

    # running
    def invoke(self, plugin: Plugin, action: str, input: Any,
               ctx: Optional[Context] = None) -> Any:
        """Calls ``action`` through the same JSON decoding and encoding as the component."""
        out = plugin.call(action, json.dumps(input), ctx or Context())
        return json.loads(out)

    def invoke_error(self, plugin: Plugin, action: str, input: Any,
                     ctx: Optional[Context] = None) -> PluginError:
        """Calls ``action`` expecting a :class:`PluginError`, and returns it."""
        try:
            out = plugin.call(action, json.dumps(input), ctx or Context())
        except PluginError as e:
            return e
        raise AssertionError(f"`{action}` succeeded with {out}")

    # the host interface
    def config_get(self, key: str) -> Optional[str]:
        return self._config.get(key)

    def secret_get(self, name: str) -> str:
        if name in self._missing:
            raise PluginError("secret_missing", f"secret `{name}` is granted but not set")
        if name not in self._secrets:
            raise PluginError("secret_not_granted", f"secret `{name}` is not granted to this plugin")
        return self._secrets[name]

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    def now_ms(self) -> int:
        return self._now_ms

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def http_send(self, method: str, url: str, headers: List[Tuple[str, str]], body: bytes):
        self.requests.append(SentRequest(method, url, list(headers), bytes(body)))
        queue = self._answers.get((method, url))
        if not queue:
            raise HttpError("denied", f"no canned answer for {method.upper()} {url}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, HttpError):
            raise answer
        return answer


def describe(plugin: Plugin) -> List[Dict[str, Any]]:
    """``describe()`` with the schemas parsed back."""
    return [
        dict(d, input_schema=json.loads(d["input_schema"]),
             output_schema=json.loads(d["output_schema"]))
        for d in plugin.describe()
    ]


def assert_manifest_matches(plugin: Plugin, manifest_path: str) -> None:
    """Fails unless ``actions`` in ``plugin.toml`` equals the registered actions."""
    listed = _read_toml(manifest_path).get("actions", [])
    if sorted(listed) != sorted(plugin.names()):
        raise AssertionError(f"plugin.toml lists {listed}, the plugin has {plugin.names()}")


def _read_toml(path: str) -> Dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        return _read_flat_toml(path)
    with open(path, "rb") as f:
        return tomllib.load(f)


def _read_flat_toml(path: str) -> Dict[str, Any]:
    """Just enough TOML for plugin.toml on Python < 3.11: ``[table]`` headers and
    ``key = value`` lines whose values are JSON-compatible (strings, arrays, numbers)."""
    import re

    out: Dict[str, Any] = {}
    table = out
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            header = re.fullmatch(r"\[([a-z_]+)\]", line)
            if header:
                table = out.setdefault(header.group(1), {})
                continue
            key, _, value = line.partition("=")
            table[key.strip()] = json.loads(value.strip())
    return out
