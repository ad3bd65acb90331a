"""The control API client, standard library only (runtime adapters import it and must start fast).

`call(method, path, body, socket_path)` returns the decoded JSON (or text for /metrics) or raises
`ControlError` with the daemon's message, or with what went wrong reaching it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

DEFAULT_SOCKET = "/run/resolver/resolver.sock"


class ControlError(Exception):
    def __init__(self, message: str, status: int = 0, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("RESOLVER_SOCKET") or DEFAULT_SOCKET


def call(
    method: str, path: str, body: Any = None, socket_path: str = DEFAULT_SOCKET, timeout: float = 30.0
) -> Any:
    connection = _UnixConnection(socket_path, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
    except PermissionError:
        raise ControlError(
            f"permission denied on {socket_path}: the control socket is for root only"
        ) from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(
            f"cannot reach the daemon at {socket_path}: is `resolver serve` running?"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ControlError(f"talking to the daemon at {socket_path} failed: {exc}") from None
    finally:
        connection.close()
    if response.headers.get_content_type() != "application/json":
        if response.status >= 400:
            raise ControlError(data.decode(errors="replace"), response.status)
        return data.decode()
    decoded = json.loads(data)
    if response.status >= 400:
        error = decoded.get("error", {}) if isinstance(decoded, dict) else {}
        raise ControlError(
            error.get("message", f"HTTP {response.status}"), response.status, error.get("kind", "")
        )
    return decoded
