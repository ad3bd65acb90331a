"""The control API client, standard library only (runtime adapters import it and must start fast).

`call(method, path, body, socket_path)` returns the decoded JSON (or text for /metrics) or raises
`ControlError` with the daemon's message, or with what went wrong reaching it.

It speaks just enough HTTP/1.1 itself (one request per connection, `Connection: close`) rather than
import `http.client`, which pulls in `ssl` and `email` and doubles the start-up time of a CNI plugin; for
the same reason it uses `_socket` (the `socket` module builds enums of every constant when imported).
"""

from __future__ import annotations

import _socket
import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/resolver/resolver.sock"
MAX_RESPONSE = 16 << 20


class ControlError(Exception):
    def __init__(self, message: str, status: int = 0, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class _BadResponse(Exception):
    pass


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("RESOLVER_SOCKET") or DEFAULT_SOCKET


def encode_request(method: str, path: str, body: Any = None) -> bytes:
    """One HTTP/1.1 request with a JSON body (when `body` is not None) that asks to close afterwards."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    elif method in ("POST", "PUT"):
        head.append("Content-Length: 0")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + payload


def decode_response(data: bytes) -> tuple[int, str, bytes]:
    """Status, content type (lower case, no parameters) and body of one complete HTTP/1.x response."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise _BadResponse("the response ended inside its header")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _BadResponse(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _unchunk(rest)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(rest) < length:
            raise _BadResponse("the response body is shorter than its Content-Length")
        rest = rest[:length]
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    return int(parts[1]), content_type, rest


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise _BadResponse("the chunked response body is cut short")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]


def _exchange(request: bytes, path: str, timeout: float) -> bytes:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(request)
        chunks = []
        size = 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RESPONSE:
                raise _BadResponse(f"the response is larger than {MAX_RESPONSE} bytes")
        return b"".join(chunks)
    finally:
        sock.close()


def call(
    method: str, path: str, body: Any = None, socket_path: str = DEFAULT_SOCKET, timeout: float = 30.0
) -> Any:
    try:
        status, content_type, data = decode_response(
            _exchange(encode_request(method, path, body), socket_path, timeout)
        )
    except PermissionError:
        raise ControlError(
            f"permission denied on {socket_path}: the control socket is for root only"
        ) from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(
            f"cannot reach the daemon at {socket_path}: is `resolver serve` running?"
        ) from None
    except (OSError, ValueError, _BadResponse) as exc:
        raise ControlError(f"talking to the daemon at {socket_path} failed: {exc}") from None
    if content_type != "application/json":
        if status >= 400:
            raise ControlError(data.decode(errors="replace"), status)
        return data.decode()
    decoded = json.loads(data)
    if status >= 400:
        error = decoded.get("error", {}) if isinstance(decoded, dict) else {}
        raise ControlError(error.get("message", f"HTTP {status}"), status, error.get("kind", ""))
    return decoded
