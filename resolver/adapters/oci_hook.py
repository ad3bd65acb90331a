"""`resolver-oci-hook`: an OCI runtime hook: joins a container at `createRuntime`, leaves at `poststop`.

The runtime passes the container state (`id`, `status`, `pid`, `bundle`, `annotations`) on stdin.

* createRuntime (status "creating", or `--stage createRuntime`): the netns is the one in the bundle's
  config.json (`linux.namespaces[type=network].path`) or else `/proc/PID/ns/net`; the addresses are read
  from `/proc/PID/net/fib_trie` (IPv4) and `/proc/PID/net/if_inet6` (IPv6), i.e. inside that netns,
  without loopback and link-local ones; the resolv.conf the daemon rewrites in place is the source of the
  bind mount on `/etc/resolv.conf` (what podman, CRI-O and Docker do), or else `etc/resolv.conf` below the
  bundle's root (refused if a component is a symlink).
* poststop (status "stopped", `pid` is null): leaves, by the container id, every network it joined.

Annotations (podman: `--annotation KEY=VALUE`; lists take spaces or semicolons, since podman splits
values on commas):

* `io.resolver.networks`: the networks to join (default: `--network`, "default"); the shipped hooks.d
  file runs the hook only for containers that carry it;
* `io.resolver.name`: the container's name (default: config.json `hostname`, else the id's first 12
  characters);
* `io.resolver.aliases`: more names on every network it joins.

Rules: standard library only; parsing is pure and table-tested (`parse_state`, `parse_bundle_config`,
`ipv4_from_fib_trie`, `ipv6_from_if_inet6`, `registrations`); `main` is the I/O.
"""

from __future__ import annotations

import _socket
import json
import os
import stat
import sys

from resolver.adapters.common import AdapterError, Control, Record, Registration, split_list
from resolver.control.client import DEFAULT_SOCKET

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

PROGRAM = "resolver-oci-hook"
ANNOTATION_NETWORKS = "io.resolver.networks"
ANNOTATION_NAME = "io.resolver.name"
ANNOTATION_ALIASES = "io.resolver.aliases"
DEFAULT_NETWORK = "default"
JOIN_STAGES = ("createRuntime", "prestart", "poststart")
LEAVE_STAGES = ("poststop",)
_STATUS_STAGE = {"creating": "createRuntime", "created": "createRuntime", "stopped": "poststop"}
# if_inet6 scope values: 0x00 global, 0x10 host (loopback), 0x20 link, 0x40 site, 0x80 compat
_IF_INET6_GLOBAL_SCOPES = (0x00, 0x40)


class HookError(Exception):
    pass


class State(Record):
    """The OCI state of the container (stdin)."""

    __slots__ = ("annotations", "bundle", "id", "pid", "status")

    def __init__(
        self, id: str, status: str, pid: int | None, bundle: str, annotations: Mapping[str, str] | None = None
    ) -> None:
        self.id, self.status, self.pid, self.bundle = id, status, pid, bundle
        self.annotations: Mapping[str, str] = annotations or {}


class BundleConfig(Record):
    """What the hook reads from the bundle's config.json."""

    __slots__ = ("annotations", "has_netns", "hostname", "netns_path", "resolv_conf_source", "root")

    def __init__(
        self,
        hostname: str | None = None,
        netns_path: str | None = None,
        has_netns: bool = False,
        resolv_conf_source: str | None = None,
        root: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        self.hostname, self.netns_path, self.has_netns = hostname, netns_path, has_netns
        self.resolv_conf_source, self.root = resolv_conf_source, root
        self.annotations: Mapping[str, str] = annotations or {}


class Options(Record):
    """The hook's command line (the `args` of the hooks.d file)."""

    __slots__ = ("domain", "network", "socket", "stage")

    def __init__(
        self,
        socket: str = DEFAULT_SOCKET,
        network: str = DEFAULT_NETWORK,
        domain: str | None = None,
        stage: str | None = None,
    ) -> None:
        self.socket, self.network, self.domain, self.stage = socket, network, domain, stage


# ---- parsing (pure) -------------------------------------------------------------------------------------


def parse_state(raw: bytes) -> State:
    """The OCI state document the runtime writes to a hook's stdin."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HookError(f"the container state on stdin is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HookError("the container state on stdin must be a JSON object")
    container_id, bundle, pid = doc.get("id"), doc.get("bundle", ""), doc.get("pid")
    if not isinstance(container_id, str) or not container_id:
        raise HookError('the container state has no "id"')
    if not isinstance(bundle, str):
        raise HookError('the container state\'s "bundle" must be a path')
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        raise HookError(f'the container state\'s "pid" {pid!r} is not a process id')
    return State(container_id, str(doc.get("status", "")), pid, bundle, _annotations(doc.get("annotations")))


def _annotations(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise HookError("annotations must map names to strings")
    return dict(value)


def parse_bundle_config(doc: Mapping[str, Any]) -> BundleConfig:
    """The parts of an OCI bundle's config.json the hook needs."""
    linux = doc.get("linux") or {}
    namespaces = linux.get("namespaces") or [] if isinstance(linux, dict) else []
    network = [n for n in namespaces if isinstance(n, dict) and n.get("type") == "network"]
    mounts = doc.get("mounts") or []
    resolv = [
        m.get("source")
        for m in mounts
        if isinstance(m, dict)
        and m.get("destination") == "/etc/resolv.conf"
        and isinstance(m.get("source"), str)
    ]
    root = doc.get("root") or {}
    hostname = doc.get("hostname")
    return BundleConfig(
        hostname=hostname if isinstance(hostname, str) and hostname else None,
        netns_path=(network[0].get("path") or None) if network else None,
        has_netns=bool(network),
        resolv_conf_source=resolv[-1] if resolv else None,
        root=root.get("path") if isinstance(root, dict) and isinstance(root.get("path"), str) else None,
        annotations=_annotations(doc.get("annotations")),
    )


def ipv4_from_fib_trie(text: str) -> list[str]:
    """The local IPv4 addresses of a netns from its `/proc/net/fib_trie` (`/32 host LOCAL` leaves).

    Loopback addresses (127.0.0.0/8) are left out; each address appears once, in order of appearance.
    """
    found: dict[str, None] = {}
    last_leaf = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last_leaf = stripped[4:]
        elif stripped == "/32 host LOCAL" and last_leaf and not last_leaf.startswith("127."):
            found[last_leaf] = None
    return list(found)


def ipv6_from_if_inet6(text: str) -> list[str]:
    """Global IPv6 addresses of a netns from its `/proc/net/if_inet6` (no loopback, no link-local)."""
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        if int(fields[3], 16) not in _IF_INET6_GLOBAL_SCOPES or fields[5] == "lo":
            continue
        found.append(_socket.inet_ntop(_socket.AF_INET6, bytes.fromhex(fields[0])))
    return list(dict.fromkeys(found))


def stage_of(state: State, options: Options) -> str:
    stage = options.stage or _STATUS_STAGE.get(state.status)
    if stage not in JOIN_STAGES + LEAVE_STAGES:
        raise HookError(
            f"cannot tell the hook stage from status {state.status!r}: pass --stage createRuntime or poststop"
        )
    return stage


def networks_of(annotations: Mapping[str, str], options: Options) -> tuple[str, ...]:
    return split_list(annotations.get(ANNOTATION_NETWORKS, "")) or (options.network,)


def netns_of(state: State, config: BundleConfig) -> str:
    if not config.has_netns:
        raise HookError(
            f"container {state.id} shares the runtime's network namespace (no linux.namespaces network "
            "entry): there is no sandbox to serve"
        )
    if config.netns_path:
        return config.netns_path
    if state.pid is None:
        raise HookError("the container state has no pid, so its network namespace cannot be found")
    return f"/proc/{state.pid}/ns/net"


def registrations(
    state: State, config: BundleConfig, addresses: Sequence[str], resolv_conf: str | None, options: Options
) -> list[Registration]:
    """One registration per network the container joins."""
    annotations = {**config.annotations, **state.annotations}
    name = annotations.get(ANNOTATION_NAME) or config.hostname or state.id[:12]
    v4 = tuple(a for a in addresses if ":" not in a)
    v6 = tuple(a for a in addresses if ":" in a)
    netns = netns_of(state, config)
    return [
        Registration(
            network=network,
            netns=netns,
            endpoint=state.id,
            name=name,
            aliases=split_list(annotations.get(ANNOTATION_ALIASES, "")),
            ipv4=v4,
            ipv6=v6,
            resolv_conf=resolv_conf,
            domain=options.domain,
        )
        for network in networks_of(annotations, options)
    ]


# ---- I/O --------------------------------------------------------------------------------------------------


def read_bundle_config(bundle: str) -> BundleConfig:
    if not bundle:
        return BundleConfig(has_netns=True)
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise HookError(f"the bundle has no config.json ({path})") from None
    except (OSError, ValueError) as exc:
        raise HookError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise HookError(f"{path} is not a JSON object")
    return parse_bundle_config(doc)


def read_addresses(pid: int) -> list[str]:
    """Addresses inside the netns of `pid`, through `/proc/PID/net` (which shows that process's netns)."""
    try:
        with open(f"/proc/{pid}/net/fib_trie") as f:
            v4 = ipv4_from_fib_trie(f.read())
    except OSError as exc:
        raise HookError(f"cannot read the addresses of process {pid}: {exc}") from None
    try:
        with open(f"/proc/{pid}/net/if_inet6") as f:
            v6 = ipv6_from_if_inet6(f.read())
    except FileNotFoundError:
        v6 = []  # IPv6 disabled in that netns
    return v4 + v6


def resolv_conf_path(state: State, config: BundleConfig) -> str | None:
    """The host path of the container's resolv.conf: the bind-mount source, else below the rootfs.

    The rootfs fallback walks `etc/resolv.conf` with lstat and refuses a symlink: the image could
    point it at a host file. None when the container has no resolv.conf at all.
    """
    if config.resolv_conf_source:
        return config.resolv_conf_source
    if not config.root:
        return None
    root = config.root if os.path.isabs(config.root) else os.path.join(state.bundle, config.root)
    path = root
    for part in ("etc", "resolv.conf"):
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            raise HookError(
                f"{path} is a symlink: refusing to rewrite the container's resolv.conf through it"
            )
    return path


def run(state: State, options: Options) -> list[str]:
    """Carry out the stage; returns one line per network for the runtime's log."""
    config = read_bundle_config(state.bundle)
    daemon = Control(options.socket)
    annotations = {**config.annotations, **state.annotations}
    if stage_of(state, options) in LEAVE_STAGES:
        return [
            f"left {network}" if daemon.unregister(state.id, network) else f"was not on {network}"
            for network in networks_of(annotations, options)
        ]
    if state.pid is None:
        raise HookError("the container state has no pid: run the hook at createRuntime")
    addresses = read_addresses(state.pid)
    done = []
    for reg in registrations(state, config, addresses, resolv_conf_path(state, config), options):
        daemon.register(reg)
        done.append(f"joined {reg.network} as {reg.name} ({', '.join(addresses) or 'no address'})")
    return done


USAGE = f"usage: {PROGRAM} [--socket PATH] [--network NAME] [--domain DOMAIN] [--stage STAGE]"
_OPTIONS = {"--socket": "socket", "--network": "network", "--domain": "domain", "--stage": "stage"}


def parse_args(argv: Sequence[str]) -> Options:
    """`--socket PATH` (default $RESOLVER_SOCKET or the daemon's default), `--network NAME` (for containers
    that name none), `--domain DOMAIN` (of a network the hook creates), `--stage STAGE` (default: from the
    state's status). Not argparse: it would double the hook's start-up time."""
    values: dict[str, str] = {"socket": os.environ.get("RESOLVER_SOCKET") or DEFAULT_SOCKET}
    args = list(argv)
    while args:
        flag = args.pop(0)
        option, sep, value = flag.partition("=")
        if option not in _OPTIONS:
            raise HookError(f"unknown argument {flag!r}\n{USAGE}")
        if not sep:
            if not args:
                raise HookError(f"{option} needs a value\n{USAGE}")
            value = args.pop(0)
        values[_OPTIONS[option]] = value
    stage = values.get("stage")
    if stage is not None and stage not in JOIN_STAGES + LEAVE_STAGES:
        raise HookError(f"--stage must be one of {', '.join(JOIN_STAGES + LEAVE_STAGES)}, not {stage!r}")
    return Options(values["socket"], values.get("network", DEFAULT_NETWORK), values.get("domain"), stage)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
        state = parse_state(sys.stdin.buffer.read())
        for line in run(state, options):
            print(f"{PROGRAM}: {state.id[:12]}: {line}", file=sys.stderr)
    except (HookError, AdapterError) as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
