"""The control API server: versioned HTTP+JSON routes on a Unix socket (mode 0600, root only).

Rules: every error is JSON `{"error": {"kind": ..., "message": ...}}` with 400 (invalid), 404 (not-found),
409 (conflict), 503 (shared registry unreachable, or not-saved: the state directory is full or read-only),
403 (not root) or 500; a refused request changes nothing. Only peers whose SO_PEERCRED uid is 0 or the
daemon's own uid are served, in addition to the socket's file mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from resolver.app import AttachError, PersistError
from resolver.control import inspect, schema
from resolver.registry.errors import RegistryError

if TYPE_CHECKING:
    from resolver.app import Daemon

log = logging.getLogger("resolver.control")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"kind": kind, "message": message}}, status=status)


def _peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return None
    with contextlib.suppress(OSError):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    return None


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    uid = _peer_uid(request)
    if uid is not None and uid not in (0, os.geteuid()):
        return error_response(403, "forbidden", "the control socket is for root only")
    try:
        return await handler(request)
    except RegistryError as exc:
        status = {"invalid": 400, "not-found": 404, "conflict": 409, "unavailable": 503}[exc.kind]
        return error_response(status, exc.kind, exc.message)
    except AttachError as exc:
        return error_response(500, "attach-failed", str(exc))
    except PersistError as exc:
        return error_response(503, "not-saved", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, "http", f"{exc.reason}: {request.method} {request.path}")
    except Exception as exc:
        log.exception("control request %s %s failed", request.method, request.path)
        return error_response(500, "internal", f"internal error: {exc!r}")


async def _body(request: web.Request) -> Any:
    return schema.decode_body(await request.read())


class ControlServer:
    def __init__(self, daemon: Daemon, path: str) -> None:
        self.daemon = daemon
        self.path = path
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[guard], client_max_size=1 << 20)
        d = self.daemon
        r = app.router
        r.add_get("/v1/status", _reading(lambda _q: d.status()))
        r.add_get("/metrics", self._metrics)
        r.add_get("/v1/networks", _reading(lambda _q: inspect.networks(d)))
        r.add_post("/v1/networks", self._create_network)
        r.add_get("/v1/networks/{name}", _reading(lambda q: inspect.network(d, q.match_info["name"])))
        r.add_delete("/v1/networks/{name}", self._remove_network)
        r.add_post("/v1/networks/{network}/services", self._create_service)
        r.add_get(
            "/v1/networks/{network}/services/{name}",
            _reading(lambda q: inspect.service(d, q.match_info["network"], q.match_info["name"])),
        )
        r.add_delete("/v1/networks/{network}/services/{name}", self._remove_service)
        r.add_post("/v1/endpoints", self._join)
        r.add_get(
            "/v1/endpoints/{id}",
            _reading(lambda q: inspect.endpoint(d, q.match_info["id"], q.query.get("network"))),
        )
        r.add_delete("/v1/endpoints/{id}", self._leave)
        r.add_get("/v1/sandboxes", _reading(lambda _q: inspect.sandboxes(d)))
        r.add_get("/v1/sandbox", _reading(lambda q: inspect.sandbox(d, q.query.get("netns", ""))))
        r.add_post("/v1/query", self._query)
        return app

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.daemon.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _create_network(self, request: web.Request) -> web.Response:
        network = await self.daemon.create_network(schema.create_network(await _body(request)))
        return _json(network.to_dict(), status=201)

    async def _remove_network(self, request: web.Request) -> web.Response:
        await self.daemon.remove_network(request.match_info["name"])
        return _json({"removed": request.match_info["name"]})

    async def _create_service(self, request: web.Request) -> web.Response:
        event = schema.create_service(request.match_info["network"], await _body(request))
        return _json((await self.daemon.create_service(event)).to_dict(), status=201)

    async def _remove_service(self, request: web.Request) -> web.Response:
        await self.daemon.remove_service(request.match_info["network"], request.match_info["name"])
        return _json({"removed": request.match_info["name"]})

    async def _join(self, request: web.Request) -> web.Response:
        endpoint = await self.daemon.join(schema.join(await _body(request)))
        return _json(endpoint.to_dict(), status=201)

    async def _leave(self, request: web.Request) -> web.Response:
        endpoint = await self.daemon.leave(request.match_info["id"], request.query.get("network"))
        return _json(endpoint.to_dict())

    async def _query(self, request: web.Request) -> web.Response:
        name, qtype, netns = schema.query(await _body(request))
        return _json(await inspect.query(self.daemon, name, qtype, netns))

    async def start(self) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(self.runner, self.path).start()
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()


def _reading(read: Callable[[web.Request], Any]) -> Handler:
    """A GET handler that answers what `read` returns, as JSON."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return _json(read(request))

    return handle


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, indent=1))
