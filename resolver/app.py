"""The daemon: owns the registry, the per-sandbox sites, the namespace worker, persistence and the
control API, and orchestrates joins and leaves.

Rules:
- every change goes registry first (so the first packet finds the name), then sockets, then resolv.conf
  (the sandbox switches to 127.0.0.11 only once something answers there); a failed attach undoes itself
  and the registration, and the caller gets the reason;
- a change is acknowledged only after the state is persisted; a change that cannot be saved (full or
  read-only state directory) is undone and refused with PersistError. A new sandbox's state is saved
  after its probe and before its resolv.conf is written, a last leave's after its resolv.conf is
  restored: a daemon killed at any point comes back with the sandbox either fully joined or fully
  absent, and with the record that undoes every resolv.conf it wrote;
- a restarted daemon re-attaches every sandbox whose namespace still exists (same identity) and drops
  the others;
- changes are serialised by one lock; queries never wait for it;
- a vanished namespace is noticed by the watcher, which also restores flushed redirect rules and
  re-reads the host resolv.conf when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from resolver import __version__, backends, config
from resolver.config import Settings
from resolver.core.cache import AnswerCache
from resolver.nsinject import netns as ns
from resolver.nsinject import redirect, resolvfile
from resolver.nsinject.resolvconf import parse as parse_resolv_conf
from resolver.nsinject.resolvconf import upstream_servers
from resolver.registry import model as m
from resolver.registry.errors import Conflict, InvalidValue, NotFound, RegistryError
from resolver.registry.registry import Registry, find_endpoint
from resolver.registry.registry import apply as registry_apply
from resolver.registry.view import View, Views
from resolver.server.dispatch import Dispatcher
from resolver.server.forwarder import Forwarder
from resolver.server.metrics import Metrics
from resolver.server.site import Site
from resolver.server.upstream import SocketPool
from resolver.store import SandboxRecord, Store

log = logging.getLogger("resolver.daemon")
PROBE_QUERY_NAME = b"\x07version\x04bind\x00"
CLASS_CH = 3
TXT = 16
REDIRECT_PROBES_AT_ONCE = 32
STALL_ENV = "RESOLVER_TEST_STALL_AT"
"""Tests only: the name of a join step (see `_step`) where the daemon logs `stalled at STEP` and then
waits for ever, so that a test can kill it exactly there. Unset in production."""


async def _step(name: str, joining: bool = True) -> None:
    if joining and os.environ.get(STALL_ENV) == name:
        log.warning("stalled at %s (%s is set)", name, STALL_ENV)
        await asyncio.Event().wait()


class AttachError(Exception):
    """The daemon could not serve DNS inside a sandbox; the message says why."""


class PersistError(Exception):
    """A change could not be saved in the state directory, so it was undone; the message says why."""


def sandbox_path(netns: str) -> str:
    try:
        return ns.netns_path(netns)
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None


def probe_query(query_id: int) -> bytes:
    """A CH TXT version.bind query: answered by the core itself, never forwarded."""
    return (
        struct.pack("!HHHHHH", query_id, 0, 1, 0, 0, 0) + PROBE_QUERY_NAME + struct.pack("!HH", TXT, CLASS_CH)
    )


def _udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def _listeners_and_client(address: str, port: int) -> tuple[ns.Listeners, socket.socket]:
    """The sandbox's listeners and a client socket for the join probe, in one trip into it."""
    listeners = ns.open_listeners(address, port)
    try:
        return listeners, _udp_client()
    except BaseException:
        listeners.close()
        raise


def _close_orphaned(future: asyncio.Future[tuple[ns.Listeners, socket.socket]]) -> None:
    if not future.cancelled() and future.exception() is None:
        listeners, client = future.result()
        listeners.close()
        client.close()


class Daemon:
    def __init__(
        self, settings: Settings, config_file: str | None = None, flags: dict[str, Any] | None = None
    ):
        self.settings = settings
        self.config_file = config_file
        self.flags = flags or {}
        self.store = Store(settings.state_dir)
        self.registry = Registry()
        self._unsaved: list[tuple[str, Any]] | None = None
        """Records the changes since the last save named (None: compare whole states at the next save)."""
        self.backend = backends.create(settings)
        self.views = Views()
        self.records: dict[str, SandboxRecord] = {}
        self.sites: dict[str, Site] = {}
        self.metrics = Metrics()
        self.cache = (
            AnswerCache(settings.cache_size, settings.cache_max_ttl, settings.cache_min_negative_ttl)
            if settings.cache_enabled
            else None
        )
        self.sockets = SocketPool(self._run_in)
        self.forwarder = Forwarder(
            settings, self.metrics, self.sockets.factory, self.cache, self.sockets.take_nowait
        )
        self.dispatcher = Dispatcher(self.metrics, self.forwarder, self.cache)
        self.worker: ns.NamespaceWorker | None = None
        self.host_servers: tuple[str, ...] = ()
        self.host_text: str | None = None
        self._host_stamp: tuple | None = None
        self.lock = asyncio.Lock()
        self.started = time.time()
        self.stopping = asyncio.Event()
        self.metrics.gauges.update(
            sandboxes=lambda: len(self.sites),
            endpoints=lambda: len(self.registry.state.endpoints),
            networks=lambda: len(self.registry.state.networks),
        )

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.worker = ns.NamespaceWorker()
        self._read_host_resolv_conf()
        await self._restore_saved()
        await self.backend.start(self)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads settings."""
        from resolver.control.api import ControlServer

        loop = asyncio.get_running_loop()
        await self.start()
        control = ControlServer(self, self.settings.socket)
        await control.start()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        watcher = asyncio.ensure_future(self._watch())
        log.info("serving; control socket %s, %d sandboxes", self.settings.socket, len(self.sites))
        try:
            await self.stopping.wait()
        finally:
            watcher.cancel()
            await control.stop()
            await self.shutdown()

    async def shutdown(self) -> None:
        await self.backend.close()
        async with self.lock:
            for netns in list(self.sites):
                await self._detach(netns, restore=self.settings.restore_resolv_conf_on_exit, keep_record=True)
        self.forwarder.close()
        self.sockets.close()
        if self.worker is not None:
            self.worker.close()
        log.info("stopped")

    def reload(self) -> None:
        try:
            settings = config.load(self.config_file, dict(os.environ), self.flags)
        except config.ConfigError as exc:
            log.error("reload refused, keeping the current settings: %s", exc)
            return
        from resolver import log as logsetup

        logsetup.setup(settings.log_level, settings.log_format)
        self.settings = settings
        self.forwarder.reconfigure(settings)
        for site in self.sites.values():
            site.settings = settings
        self._read_host_resolv_conf(force=True)
        self._refresh_views()
        log.info("settings reloaded")

    # ---- host resolv.conf ----------------------------------------------------------------------------

    def _read_host_resolv_conf(self, force: bool = False) -> bool:
        path = self.settings.host_resolv_conf
        try:
            st = os.stat(path)
            stamp: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._host_stamp and not force:
            return False
        self._host_stamp = stamp
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            text = ""
        self.host_text = text
        self.host_servers = upstream_servers(parse_resolv_conf(text), self.settings.listen_address)
        log.info("upstream servers from %s: %s", path, ", ".join(self.host_servers) or "none")
        return True

    # ---- views ---------------------------------------------------------------------------------------

    def view(self, netns: str) -> View:
        return self.views.view(self.registry.state, netns, self.host_servers)

    def _refresh_views(self, change: m.Change | None = None) -> None:
        """Make every site whose names or upstreams changed forget its view (all of them without a
        change); each builds its new view on its next query."""
        if change is None:
            for site in self.sites.values():
                site.forget_view()
            return
        self.views.apply(change)
        networks = set(change.touched_networks)
        for netns in change.touched_sandboxes:
            if netns in self.sites:
                self.sites[netns].forget_view()
        for site in self.sites.values():
            if site.holds_view_of(networks):
                site.forget_view()

    def _apply(self, event: m.Event) -> m.Change:
        change = self.registry.apply(event)
        self._refresh_views(change)
        if self._unsaved is not None:
            self._unsaved.extend(change.records)
        return change

    async def _save(self, dirty: Iterable[str] | None = None) -> None:
        """Persist the change just made (`dirty`: the sandboxes whose records it may have changed;
        None: any). The diff is taken here, in order; the disk write runs off the loop."""
        touched, self._unsaved = self._unsaved, []
        if dirty is None or touched is None:
            dirty = touched = None
        prepared = self.store.prepare(self.registry.state, self.records, dirty, touched)
        if self.store.needs_sync(prepared):
            await asyncio.to_thread(self.store.write, prepared)
        else:
            self.store.write(prepared)
        self.backend.local_changed()

    # ---- the shared registry (global networks; see resolver/backends) ----------------------------------

    async def _publish(self, event: m.Event) -> None:
        """Validate a network or service change, then share it (global networks) before it is applied."""
        registry_apply(self.registry.state, event)
        await self.backend.publish(event, self.registry.state)

    def local_state(self) -> m.State:
        return self.registry.state

    async def apply_remote(self, plan: Callable[[m.State], Sequence[m.Event]]) -> list[str]:
        """Apply other hosts' records; a refused record is reported (the backend retries it). They are
        saved too, as the last known state of the shared registry."""
        refused: list[str] = []
        async with self.lock:
            applied = 0
            for event in plan(self.registry.state):
                try:
                    self._apply(event)
                    applied += 1
                except RegistryError as exc:
                    refused.append(f"{type(event).__name__} {exc.message}")
            if applied:
                await self._save(dirty=())
        return refused

    async def _commit(self, dirty: Iterable[str] | None = None) -> None:
        """Save the state; raises PersistError when it cannot be written (the caller undoes the change)."""
        try:
            await self._save(dirty)
        except OSError as exc:
            log.error("cannot save the state in %s: %s", self.settings.state_dir, exc)
            raise PersistError(
                f"cannot save the state in {self.settings.state_dir}: {exc.strerror or exc}; "
                "the change was not applied"
            ) from None

    async def _save_or_log(self) -> None:
        try:
            await self._save()
        except OSError as exc:
            log.error("cannot save the state in %s: %s", self.settings.state_dir, exc)

    def _undo(self, before: m.State, change: m.Change) -> None:
        """Go back to the state `before` the change (views of what it touched are rebuilt)."""
        self.registry.state = before
        self._unsaved = None  # the next save compares whole states
        self._refresh_views(replace(change, state=before, joined=None))

    async def _apply_and_commit(self, event: m.Event) -> None:
        before = self.registry.state
        change = self._apply(event)
        try:
            await self._commit()
        except PersistError:
            self._undo(before, change)
            raise

    # ---- attach / detach -----------------------------------------------------------------------------

    async def _run_in(self, netns: str, fn: Any, *args: Any) -> Any:
        assert self.worker is not None
        return await self.worker.arun_in(netns, fn, *args)

    async def _attach(
        self, netns: str, explicit_resolv_conf: str | None, rewrite: bool = True, persist: bool = True
    ) -> None:
        """Serve DNS inside `netns`; `rewrite` false leaves its resolv.conf alone (the runtime owns it).
        With `persist`, the state is saved (PersistError when it cannot be) before resolv.conf is written."""
        assert self.worker is not None
        settings = self.settings
        port = 53 if settings.listen_mode == "direct" else 0
        opening = asyncio.ensure_future(
            self.worker.arun_in(netns, _listeners_and_client, settings.listen_address, port)
        )
        try:
            listeners, client = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_orphaned)
            raise
        except (ns.NamespaceError, OSError) as exc:
            raise AttachError(
                f"cannot listen on {settings.listen_address}:{port} in {netns}: {exc}"
            ) from None
        site = Site(netns, self.view, listeners, self.dispatcher, settings)
        try:
            await site.start(self.metrics.fast)
        except BaseException:
            client.close()
            listeners.close()
            raise
        self.sites[netns] = site
        self.sockets.open(netns)
        record = self.records.setdefault(netns, SandboxRecord())
        record.identity, record.keep_resolv_conf = ns.netns_identity(netns), not rewrite
        try:
            await _step("listening", persist)
            with contextlib.closing(client):
                if settings.listen_mode == "redirect":
                    await asyncio.to_thread(
                        redirect.install_redirect, netns, settings.listen_address, listeners.port
                    )
                if not await self._probe(netns, settings.join_timeout, client):
                    raise AttachError(f"the sandbox {netns} did not answer on {settings.listen_address}:53")
            await _step("probed", persist)
            saved = rewrite and await self._rewrite_resolv_conf(netns, explicit_resolv_conf, persist)
            if persist and not saved:
                await self._commit((netns,))
        except Exception as exc:
            await self._detach(netns, restore=True)
            if isinstance(exc, AttachError | PersistError):
                raise
            raise AttachError(f"cannot set up DNS in {netns}: {exc}") from None

    async def _rewrite_resolv_conf(self, netns: str, explicit: str | None, persist: bool) -> bool:
        """Point the sandbox's resolv.conf at us; True when the state was saved (with `persist`) between
        planning the rewrite and writing the file. The file work runs on the loop: a small regular file,
        no fsync, and the file checks refuse FIFOs and devices, so it cannot block."""
        record = self.records[netns]
        try:
            path = resolvfile.resolv_conf_path_for(netns, explicit or record.resolv_conf)
        except ValueError:
            log.warning(
                "no resolv.conf is known for %s (pass --resolv-conf); it is served but not rewritten", netns
            )
            return False
        previous = resolvfile.Rewrite.from_dict(record.rewrite) if record.rewrite else None
        try:
            plan = resolvfile.plan_rewrite(
                path, self.settings.listen_address, self.host_text, previous=previous
            )
        except FileNotFoundError:
            if explicit:
                raise AttachError(f"resolv.conf {explicit} does not exist") from None
            log.warning(
                "no resolv.conf at %s; %s is served but its resolv.conf is not rewritten", path, netns
            )
            return False
        undo = (record.rewrite, record.resolv_conf)
        record.rewrite, record.resolv_conf = plan.record.to_dict(), path
        if not plan.record.created:
            self._apply(m.SetSandboxUpstreams(netns, plan.servers))
        if persist:
            try:
                # the record that undoes the rewrite is on disk before the file changes
                await self._commit((netns,))
            except PersistError:
                record.rewrite, record.resolv_conf = undo
                raise
            await _step("saved")
        resolvfile.write_plan(plan)
        await _step("resolv-conf-written", persist)
        return persist

    async def _detach(self, netns: str, restore: bool, keep_record: bool = False) -> None:
        site = self.sites.pop(netns, None)
        if site is not None:
            await site.close(self.settings.drain_timeout)
        self.sockets.drop(netns)
        self.forwarder.forget(netns)
        record = self.records.get(netns) if keep_record else self.records.pop(netns, None)
        if self.settings.listen_mode == "redirect" and ns.netns_identity(netns) is not None:
            with contextlib.suppress(redirect.RedirectError):
                await asyncio.to_thread(redirect.remove_redirect, netns)
        if restore and record is not None and record.rewrite:
            try:
                result = await asyncio.to_thread(
                    resolvfile.restore, resolvfile.Rewrite.from_dict(record.rewrite)
                )
                log.info("resolv.conf of %s: %s", netns, result)
            except OSError as exc:
                log.warning("could not restore resolv.conf of %s: %s", netns, exc)

    async def _probe(self, netns: str, timeout: float, sock: socket.socket | None = None) -> bool:
        """True once a query sent from inside the sandbox to 127.0.0.11:53 gets an answer; `sock`, a
        client socket made in the sandbox, is used (and closed) when given."""
        assert self.worker is not None
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = await self.worker.arun_in(netns, _udp_client)
        deadline = loop.time() + timeout
        with contextlib.closing(sock):
            sock.connect((self.settings.listen_address, 53))  # UDP: sets the peer, no handshake
            while loop.time() < deadline:
                query_id = secrets.randbits(16)
                try:
                    sock.send(probe_query(query_id))
                    async with asyncio.timeout(min(0.25, timeout)):
                        reply = await loop.sock_recv(sock, 512)
                except (TimeoutError, OSError):
                    await asyncio.sleep(0.02)
                    continue
                if reply[:2] == struct.pack("!H", query_id):
                    return True
        return False

    # ---- restart ---------------------------------------------------------------------------------------

    async def _restore_saved(self) -> None:
        saved = self.store.load()
        self.registry = saved.registry
        self._unsaved = None  # the state was replaced whole: the next save compares everything
        self.records = saved.sandboxes
        self.views = Views()
        for netns in list(self.registry.state.sandboxes):
            if self._replaced_or_gone(netns):
                log.info("sandbox %s is gone; dropping its registrations", netns)
                await self._forget(netns, restore=True)
                continue
            try:
                record = self.records.get(netns, SandboxRecord())
                await self._attach(
                    netns, record.resolv_conf, rewrite=not record.keep_resolv_conf, persist=False
                )
                log.info("re-attached sandbox %s", netns)
            except AttachError as exc:
                log.error("could not re-attach %s: %s; dropping it", netns, exc)
                await self._forget(netns, restore=True)
        await self._save_or_log()

    async def _forget(self, netns: str, restore: bool) -> None:
        self._apply(m.RemoveSandbox(netns))
        await self._detach(netns, restore=restore)

    # ---- watcher ---------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                async with self.lock:
                    if self._read_host_resolv_conf():
                        self._refresh_views()
                    await self._check_sandboxes()
                if self.settings.listen_mode == "redirect":
                    await self._check_redirects()
            except Exception:
                log.exception("sandbox check failed")

    def _replaced_or_gone(self, netns: str) -> bool:
        """True when the namespace file is gone, or is now another namespace than the one attached."""
        record = self.records.get(netns)
        identity = ns.netns_identity(netns)
        return identity is None or (record is not None and record.identity not in (None, identity))

    async def _check_sandboxes(self) -> None:
        """Forget sandboxes whose namespace is gone or was replaced (a cheap stat each)."""
        changed = False
        for netns in list(self.sites):
            if self._replaced_or_gone(netns):
                log.info("namespace %s disappeared; closing its sockets", netns)
                await self._forget(netns, restore=True)
                changed = True
        if changed:
            await self._save_or_log()

    async def _check_redirects(self) -> None:
        """Probe every sandbox through its redirect rule, concurrently and outside the change lock;
        restore the rule where the probe went unanswered (something flushed the sandbox's ruleset)."""
        limit = asyncio.Semaphore(REDIRECT_PROBES_AT_ONCE)

        async def answered(netns: str) -> bool:
            async with limit:
                try:
                    return await self._probe(netns, 0.3)
                except (ns.NamespaceError, OSError):
                    return True  # the namespace is going away; the identity check handles it

        sandboxes = list(self.sites)
        results = await asyncio.gather(*(answered(netns) for netns in sandboxes))
        for netns in [n for n, ok in zip(sandboxes, results, strict=True) if not ok]:
            async with self.lock:
                site = self.sites.get(netns)
                if site is None:
                    continue
                log.warning("DNS redirect in %s stopped working (rules flushed?); restoring it", netns)
                try:
                    await asyncio.to_thread(
                        redirect.install_redirect, netns, self.settings.listen_address, site.port
                    )
                except redirect.RedirectError as exc:
                    log.error("could not restore the redirect in %s: %s", netns, exc)

    # ---- control operations (called by the control API) ------------------------------------------------

    async def create_network(self, event: m.CreateNetwork) -> m.Network:
        async with self.lock:
            await self._publish(event)
            await self._apply_and_commit(event)
            return self.registry.state.networks[event.name]

    async def remove_network(self, name: str) -> None:
        async with self.lock:
            await self._publish(m.RemoveNetwork(name))
            await self._apply_and_commit(m.RemoveNetwork(name))

    async def create_service(self, event: m.CreateService) -> m.Service:
        async with self.lock:
            await self._publish(event)
            await self._apply_and_commit(event)
            return self.registry.state.services[(event.network, event.name)]

    async def remove_service(self, network: str, name: str) -> None:
        async with self.lock:
            await self._publish(m.RemoveService(network, name))
            await self._apply_and_commit(m.RemoveService(network, name))

    async def join(self, event: m.JoinEndpoint) -> m.Endpoint:
        async with self.lock:
            netns = sandbox_path(event.sandbox)
            event = replace(event, sandbox=netns)
            if netns in self.registry.state.sandboxes and self._replaced_or_gone(netns):
                log.info("namespace %s was replaced since it joined; dropping the old sandbox", netns)
                await self._forget(netns, restore=True)
            if netns not in self.registry.state.sandboxes and ns.netns_identity(netns) is None:
                raise NotFound(f"network namespace {netns} does not exist")
            self._check_resolv_conf_matches(netns, event.resolv_conf)
            before = self.registry.state
            change = self._apply(event)
            await _step("registered")
            try:
                if change.added_sandboxes:
                    await self._attach(netns, event.resolv_conf, rewrite=event.rewrite_resolv_conf)
                else:
                    await self._commit((netns,))
            except (AttachError, PersistError):
                self._undo(before, change)
                if change.added_sandboxes:
                    await self._save_or_log()  # the attach may have saved the sandbox before failing
                raise
            await _step("joined")
            return self.registry.state.endpoints[(event.network, event.endpoint)]

    def _check_resolv_conf_matches(self, netns: str, path: str | None) -> None:
        """A sandbox has one resolv.conf: a later join may repeat it but not name another."""
        record = self.records.get(netns)
        if path and netns in self.sites and record is not None and record.resolv_conf not in (None, path):
            raise Conflict(f"sandbox {netns} already uses resolv.conf {record.resolv_conf}, not {path}")

    async def leave(self, endpoint: str, network: str | None) -> m.Endpoint:
        async with self.lock:
            found = self._find_endpoint(endpoint, network)
            before = self.registry.state
            change = self._apply(m.LeaveEndpoint(endpoint, found.network))
            detached = [(sb.netns, self.records.get(sb.netns)) for sb in change.removed_sandboxes]
            for netns, _record in detached:
                await self._detach(netns, restore=True)
            try:
                await self._commit(())
            except PersistError:
                self._undo(before, change)
                for netns, record in detached:
                    await self._reattach(netns, record or SandboxRecord())
                raise
            return found

    async def _reattach(self, netns: str, record: SandboxRecord) -> None:
        """Undo a detach whose leave could not be saved: serve the sandbox and rewrite its file again."""
        self.records[netns] = record
        try:
            await self._attach(netns, record.resolv_conf, rewrite=not record.keep_resolv_conf, persist=False)
        except AttachError as exc:
            log.error("could not re-attach %s after a failed leave: %s; dropping it", netns, exc)
            await self._forget(netns, restore=True)

    def _find_endpoint(self, endpoint: str, network: str | None) -> m.Endpoint:
        return find_endpoint(self.registry.state, endpoint, network)

    def status(self) -> dict[str, Any]:
        state = self.registry.state
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 1),
            "listen": {"address": self.settings.listen_address, "mode": self.settings.listen_mode},
            "networks": len(state.networks),
            "endpoints": len(state.endpoints),
            "sandboxes": len(self.sites),
            "queries": self.metrics.total_queries(),
            "upstream_queries": self.forwarder.upstream_queries,
            "host_upstreams": list(self.host_servers),
            "upstreams_down": self.forwarder.health.down(),
            "generation": state.generation,
            "registry": self.backend.status(),
            "cache": None
            if self.cache is None
            else {
                "entries": len(self.cache),
                "hits": self.cache.hits + sum(self.metrics.fast.cached.values()),
                "misses": self.cache.misses,
            },
        }


__all__ = ["AttachError", "Daemon", "PersistError", "RegistryError"]
