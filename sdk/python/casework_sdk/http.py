"""Outbound HTTP through the host: only origins granted in ``plugin.toml`` are reached.

``get(url)``, ``post(url, json=...)`` ... return a :class:`Response`; a transport
failure raises :class:`HttpError`, a :class:`casework_sdk.PluginError` whose code is
``http_denied``, ``http_invalid_request``, ``http_timeout`` (retryable),
``http_connection`` (retryable) or ``http_response_too_large`` — so letting it
propagate out of an action reports it as the Rust SDK does.
"""

from __future__ import annotations

import json as _json
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import PluginError, _host

Headers = Union[Dict[str, str], Sequence[Tuple[str, str]], None]

_TEXT = {
    "denied": "request denied by the host: {}",
    "invalid_request": "invalid request: {}",
    "timeout": "timed out waiting for the response",
    "connection": "connection failed: {}",
    "response_too_large": "response body exceeds the host's size limit",
}


class HttpError(PluginError):
    """A request that did not complete; ``kind`` is ``denied``, ``invalid_request``,
    ``timeout``, ``connection`` or ``response_too_large``."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(
            f"http_{kind}", _TEXT[kind].format(detail), kind in ("timeout", "connection")
        )
        self.kind = kind
        self.detail = detail


class Response:
    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return _json.loads(self.body)
        except ValueError:
            raise PluginError("bad_response", "the response body is not JSON") from None


def request(
    method: str,
    url: str,
    *,
    headers: Headers = None,
    body: bytes = b"",
    json: Any = None,
    bearer: Optional[str] = None,
) -> Response:
    pairs: List[Tuple[str, str]] = list(headers.items() if isinstance(headers, dict) else headers or [])
    if json is not None:
        body = _json.dumps(json, separators=(",", ":")).encode()
        pairs.append(("content-type", "application/json"))
    if bearer is not None:
        pairs.append(("authorization", f"Bearer {bearer}"))
    status, got, data = _host.backend().http_send(method.lower(), url, pairs, body)
    return Response(status, got, data)


def get(url: str, **kw: Any) -> Response:
    return request("get", url, **kw)


def post(url: str, **kw: Any) -> Response:
    return request("post", url, **kw)


def put(url: str, **kw: Any) -> Response:
    return request("put", url, **kw)


def patch(url: str, **kw: Any) -> Response:
    return request("patch", url, **kw)


def delete(url: str, **kw: Any) -> Response:
    return request("delete", url, **kw)


def encode_path_segment(segment: str) -> str:
    """Percent-encodes one path segment (``/`` included)."""
    return urllib.parse.quote(segment, safe="")
