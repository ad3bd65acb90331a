"""The etcd v3 backend: global networks' registries shared through etcd (aetcd, asyncio gRPC client).

A session (one etcd connection) does, in order: take this host's lease (the old one if it is still
alive), list the prefix into a mirror (the first time, or when etcd is another cluster or its revision
went back), then run three loops until one fails: keep the lease alive, write this host's endpoint keys
(the difference between local state and the mirror), and watch from the next revision into the mirror.
Any failure - etcd gone or restarted, a leader change that breaks the stream - ends the session; the
next one (after a short back-off, trying the endpoints in turn) resumes the watch where it stopped, so
etcd replays what was missed; a watch that fell behind compaction lists again. Either way the local
registry gets the difference.

Rules:
- answers never wait for etcd: remote records go into the local registry through `Replica.apply_remote`
  from the mirror, and stay there, as last known, while etcd is unreachable;
- what this host must hold in etcd is recomputed from local state each time (its endpoints on global
  networks), so joins made during an outage - and kept across a daemon restart by the state file - are
  written when etcd returns, and keys of endpoints that left meanwhile are deleted;
- every key this host writes is attached to its lease: a host that dies loses its records after the
  lease TTL; a restarted daemon re-puts them under its new lease;
- network and service changes of global networks need etcd (`publish` refuses with `Unavailable`);
  creation is a transaction, so two hosts cannot create one network with different settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aetcd
import grpc

from resolver.backends import Replica
from resolver.backends.layout import Layout, encode
from resolver.config import Settings
from resolver.registry import model as m
from resolver.registry.errors import Conflict, Unavailable

log = logging.getLogger("resolver.etcd")
logging.getLogger("grpc").setLevel(logging.INFO)  # its debug lines are one per call, about the loop
TXN_OPS = 64
"""Puts and deletes sent in one transaction (etcd allows 128 by default)."""
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0


class _TlsClient(aetcd.Client):
    """aetcd opens plain channels only; this one opens a TLS channel with the same stubs."""

    def __init__(self, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        from aetcd import rpc, watcher

        self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}", self._credentials)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout)
        self._connected.set()


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} must look like HOST:PORT")
    return host.strip("[]"), int(port)


class EtcdBackend:
    def __init__(self, settings: Settings, host: str) -> None:
        self.settings = settings
        self.layout = Layout(settings.registry_prefix, host)
        self.endpoints = [_split_endpoint(e) for e in settings.registry_endpoints]
        if not self.endpoints:
            raise ValueError("registry.endpoints is empty")
        self.replica: Replica | None = None
        self.client: aetcd.Client | None = None
        self.lease: int | None = None
        self.mirror: dict[str, bytes] = {}
        """Every key under the prefix and its value, as of `revision`."""
        self.own: dict[str, tuple[bytes, int]] = {}
        """This host's endpoint keys in etcd: value and lease."""
        self.revision = 0
        self.cluster: int | None = None
        self.touched: set[str] | None = set()
        """Mirror keys to apply locally (None: all of them)."""
        self.to_apply = asyncio.Event()
        self.applying = False
        self.to_write = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.counters = {"sessions": 0, "lists": 0, "leases": 0, "writes": 0, "refused": 0}

    # ---- RegistryBackend --------------------------------------------------------------------------------

    async def start(self, replica: Replica) -> None:
        self.replica = replica
        self.tasks = [asyncio.ensure_future(self._sessions()), asyncio.ensure_future(self._applier())]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []

    def local_changed(self) -> None:
        self.to_write.set()
        if self.counters["refused"] and not self.applying:
            self._touch(None)  # a local change (a leave, say) may have made room for a refused record

    def status(self) -> dict[str, Any]:
        return {
            "backend": "etcd",
            "host": self.layout.host,
            "connected": self.client is not None,
            "lease": self.lease,
            "revision": self.revision,
            "keys": len(self.mirror),
            **self.counters,
        }

    async def publish(self, event: m.Event, state: m.State) -> None:
        if isinstance(event, m.CreateNetwork):
            if event.scope == "global":
                await self._create(self.layout.network_key(event.name), _network_value(event, state))
        elif isinstance(event, m.RemoveNetwork):
            if _is_global(state, event.name):
                await self._remove_network(event.name)
        elif isinstance(event, m.CreateService) and _is_global(state, event.network):
            key = self.layout.service_key(event.network, event.name)
            await self._create(key, _service_value(event, state))
        elif isinstance(event, m.RemoveService) and _is_global(state, event.network):
            key = self.layout.service_key(event.network, event.name)
            await self._call(lambda c: c.delete(key.encode()))
            self.mirror.pop(key, None)

    # ---- changes of global networks and services ------------------------------------------------------

    async def _call(self, fn: Callable[[aetcd.Client], Awaitable[Any]]) -> Any:
        client = self.client
        if client is None:
            raise Unavailable("the shared registry (etcd) cannot be reached now; try again when it is back")
        try:
            return await asyncio.wait_for(fn(client), self.settings.registry_timeout)
        except (aetcd.exceptions.ClientError, grpc.RpcError, TimeoutError) as exc:
            raise Unavailable(f"the shared registry (etcd) did not take the change: {exc}") from None

    async def _create(self, key: str, value: bytes) -> None:
        """Put `key` unless it exists; an existing equal value is fine, another one is a conflict."""

        async def txn(c: aetcd.Client) -> Any:
            t = c.transactions
            return await c.transaction(
                compare=[t.create(key.encode()) == 0],
                success=[t.put(key.encode(), value)],
                failure=[t.get(key.encode())],
            )

        created, responses = await self._call(txn)
        if created:
            self.mirror[key] = value  # before the watch says so: a full plan meanwhile must not undo it
            return
        existing = responses[0][0][0] if responses and responses[0] else None
        if existing != value:
            name = key.rsplit("/", 1)[-1]
            raise Conflict(f"{name!r} already exists in the shared registry with other settings")

    async def _remove_network(self, name: str) -> None:
        prefix = self.layout.endpoints_of(name).encode()
        held = await self._call(lambda c: c.get_prefix(prefix, keys_only=True))
        hosts = sorted({key.host for kv in held if (key := self.layout.parse(kv.key.decode()))})
        if hosts:
            raise Conflict(f"network {name!r} still has endpoints on host(s) {', '.join(hosts)}")

        async def txn(c: aetcd.Client) -> Any:
            t = c.transactions
            services = self.layout.service_key(name, "").encode()
            return await c.transaction(
                compare=[],
                success=[
                    t.delete(self.layout.network_key(name).encode()),
                    t.delete(services, aetcd.utils.prefix_range_end(services)),
                ],
                failure=[],
            )

        await self._call(txn)
        self.mirror.pop(self.layout.network_key(name), None)
        services = self.layout.service_key(name, "")
        for stale in [k for k in self.mirror if k.startswith(services)]:
            del self.mirror[stale]

    # ---- sessions -------------------------------------------------------------------------------------

    def _client(self, host: str, port: int) -> aetcd.Client:
        # No client-side deadline: each call here is bounded by asyncio.wait_for instead, and the watch
        # stream must not have one at all.
        s = self.settings
        if not (s.registry_tls_ca or s.registry_tls_cert):
            return aetcd.Client(host=host, port=port)
        credentials = grpc.ssl_channel_credentials(
            _read(s.registry_tls_ca), _read(s.registry_tls_key), _read(s.registry_tls_cert)
        )
        return _TlsClient(credentials, host=host, port=port)

    async def _sessions(self) -> None:
        attempt = 0
        backoff = BACKOFF_FIRST
        while True:
            host, port = self.endpoints[attempt % len(self.endpoints)]
            client = self._client(host, port)
            try:
                await self._session(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if self.client is not None or attempt == 0 else logging.DEBUG
                reason = str(exc) or type(exc).__name__
                log.log(level, "etcd %s:%d: %s; answers go on from the last known state", host, port, reason)
                if self.client is not None:
                    backoff = BACKOFF_FIRST
            finally:
                self.client = None
                with contextlib.suppress(Exception):
                    await client.close()
            attempt += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self, client: aetcd.Client) -> None:
        timeout = self.settings.registry_timeout
        await asyncio.wait_for(self._take_lease(client), timeout)
        if not await asyncio.wait_for(self._can_resume(client), timeout):
            await asyncio.wait_for(self._list(client), timeout * 2)
        self.client = client
        self.counters["sessions"] += 1
        log.info(
            "etcd: connected as host %s, lease %x, revision %d", self.layout.host, self.lease, self.revision
        )
        loops = [
            asyncio.ensure_future(self._keep_alive(client)),
            asyncio.ensure_future(self._writer(client)),
            asyncio.ensure_future(self._watch(client)),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _take_lease(self, client: aetcd.Client) -> None:
        if self.lease is not None:
            try:
                reply = await client.refresh_lease(self.lease)
            except (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError):
                raise
            except aetcd.exceptions.ClientError:
                reply = None  # "requested lease not found"
            if reply is not None and reply.TTL > 0:
                return
            log.warning("etcd: lease %x expired; registering this host's endpoints again", self.lease)
        lease = await client.lease(self.settings.registry_lease_ttl)
        self.lease = lease.id
        self.counters["leases"] += 1
        self.to_write.set()

    async def _keep_alive(self, client: aetcd.Client) -> None:
        """Refresh the lease every third of its TTL; a slow answer is retried, not fatal, until the
        lease would have run out (a busy daemon must not drop its own registrations)."""
        ttl = self.settings.registry_lease_ttl
        interval = max(ttl / 3, 0.2)
        refreshed = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self._take_lease(client), self.settings.registry_timeout)
                refreshed = asyncio.get_running_loop().time()
            except TimeoutError:
                if asyncio.get_running_loop().time() - refreshed > ttl:
                    raise
                log.debug("etcd: lease refresh timed out; trying again")

    async def _can_resume(self, client: aetcd.Client) -> bool:
        """True when the watch can go on from the last revision seen: this is the same cluster and its
        revision did not go back (a restored or replaced etcd is listed again)."""
        if self.cluster is None:
            return False
        header = (await client.get_prefix(self.layout.network_key("~").encode(), keys_only=True)).header
        if header.cluster_id == self.cluster and header.revision >= self.revision:
            return True
        log.warning("etcd: another cluster, or its revision went back; listing again")
        return False

    async def _list(self, client: aetcd.Client) -> None:
        listing = await client.get_prefix(self.layout.prefix.encode())
        self.counters["lists"] += 1
        self.revision = listing.header.revision
        self.cluster = listing.header.cluster_id
        self.mirror = {kv.key.decode(): kv.value for kv in listing}
        self.own = {
            kv.key.decode(): (kv.value, kv.lease) for kv in listing if self.layout.is_own(kv.key.decode())
        }
        self._touch(None)
        self.to_write.set()

    async def _watch(self, client: aetcd.Client) -> None:
        prefix = self.layout.prefix.encode()
        while True:
            try:
                watch = await client.watch_prefix(prefix, start_revision=self.revision + 1)
                async for event in watch:
                    self._seen(event)
            except aetcd.exceptions.RevisionCompactedError as exc:
                log.warning(
                    "etcd: watch at revision %d fell behind compaction (%d); listing again",
                    self.revision + 1,
                    exc.compacted_revision,
                )
                await asyncio.wait_for(self._list(client), self.settings.registry_timeout * 2)
                continue
            raise ConnectionError("the etcd watch ended")

    def _seen(self, event: Any) -> None:
        key = event.kv.key.decode()
        self.revision = max(self.revision, event.kv.mod_revision)
        if event.kind == aetcd.rtypes.EventKind.PUT:
            self.mirror[key] = event.kv.value
            if self.layout.is_own(key):
                self.own[key] = (event.kv.value, event.kv.lease)
        else:
            self.mirror.pop(key, None)
            if self.own.pop(key, None) is not None:
                self.to_write.set()
        if not self.layout.is_own(key):
            self._touch({key})

    # ---- writing this host's endpoints ------------------------------------------------------------------

    async def _writer(self, client: aetcd.Client) -> None:
        assert self.replica is not None
        while True:
            await self.to_write.wait()
            self.to_write.clear()
            wanted = self.layout.own_endpoints(self.replica.local_state())
            lease = self.lease
            t = client.transactions
            ops: list[Any] = [
                t.put(k.encode(), v, lease=lease) for k, v in wanted.items() if self.own.get(k) != (v, lease)
            ]
            ops += [t.delete(k.encode()) for k in self.own if k not in wanted]
            for start in range(0, len(ops), TXN_OPS):
                batch = ops[start : start + TXN_OPS]
                txn = client.transaction(compare=[], success=batch, failure=[])
                await asyncio.wait_for(txn, self.settings.registry_timeout * 3)
                self.counters["writes"] += len(batch)
            for key, value in wanted.items():
                self.own[key] = (value, lease or 0)
            for key in [k for k in self.own if k not in wanted]:
                del self.own[key]

    # ---- applying other hosts' records ------------------------------------------------------------------

    def _touch(self, keys: set[str] | None) -> None:
        if keys is None or self.touched is None:
            self.touched = None
        else:
            self.touched |= keys
        self.to_apply.set()

    async def _applier(self) -> None:
        assert self.replica is not None
        while True:
            await self.to_apply.wait()
            self.to_apply.clear()
            keys, self.touched = self.touched, set()
            self.applying = True
            try:
                refused = await self.replica.apply_remote(functools.partial(self._plan, keys=keys))
            finally:
                self.applying = False
            for reason in refused:
                log.warning("etcd: a record of another host is not applied: %s", reason)
            self.counters["refused"] = len(refused)

    def _plan(self, state: m.State, keys: set[str] | None) -> Sequence[m.Event]:
        plan = self.layout.plan(state, self.mirror, keys)
        for problem in plan.problems:
            log.warning("etcd: %s", problem)
        return plan.events


def _is_global(state: m.State, network: str) -> bool:
    found = state.networks.get(network)
    return found is not None and found.scope == "global"


def _network_value(event: m.CreateNetwork, state: m.State) -> bytes:
    from resolver.registry.registry import apply

    return encode(apply(state, event).state.networks[event.name].to_dict())


def _service_value(event: m.CreateService, state: m.State) -> bytes:
    from resolver.registry.registry import apply

    return encode(apply(state, event).state.services[(event.network, event.name)].to_dict())
