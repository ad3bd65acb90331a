"""`resolver-cni`: a chained CNI plugin that registers a container's addresses with the resolver daemon.

It goes after the plugins that make the interface and assign addresses (e.g. `bridge` + `host-local`).
ADD takes the container id, netns, network name, container name (`K8S_POD_NAME` in `CNI_ARGS`, falling
back to the first 12 characters of the container id), the addresses of the container-side interfaces in
`prevResult` and `runtimeConfig.aliases[<network>]` (the `aliases` capability), joins the endpoint through
the control socket and prints `prevResult` unchanged. DEL leaves, and succeeds when the endpoint, the
netns or the daemon is already gone. CHECK fails unless the daemon holds the endpoint with the addresses
of `prevResult`. VERSION lists the supported spec versions (0.4.0 and 1.0.0).

Plugin configuration keys (all optional): `socket` (control socket), `domain` (of the network, when the
plugin creates it), `rewriteResolvConf` (default true: the daemon points the sandbox's resolv.conf at
127.0.0.11), `resolvConf` (the file to rewrite; default: derived by the daemon from the netns).

Rules: standard library only; parsing is pure (`parse_env`, `parse_config`, `registration`) and every bad
input is a `CniError` carrying the spec's error code and a message naming the field; `main` is the I/O.
"""

from __future__ import annotations

import json
import os
import sys

from resolver.adapters.common import AdapterError, Control, Record, Registration, split_addresses
from resolver.control.client import DEFAULT_SOCKET

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

PROGRAM = "resolver-cni"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS"),
    "DEL": ("CNI_CONTAINERID",),
}

# Error codes of the CNI specification; 100 and up are this plugin's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
DAEMON_FAILURE = 100
CHECK_FAILED = 101

# Keys the CNI specification (and libcni) put in a plugin's configuration.
STANDARD_KEYS = frozenset(
    [
        "cniVersion",
        "name",
        "type",
        "args",
        "ipMasq",
        "ipam",
        "dns",
        "capabilities",
        "runtimeConfig",
        "prevResult",
        "disableCheck",
    ]
)
PLUGIN_KEYS: dict[str, type] = {"socket": str, "domain": str, "rewriteResolvConf": bool, "resolvConf": str}


class CniError(Exception):
    """A CNI error result: `code` from the specification, `msg` saying what is wrong."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def document(self, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


class CniEnv(Record):
    __slots__ = ("args", "command", "container_id", "ifname", "netns")

    def __init__(
        self, command: str, container_id: str, netns: str, ifname: str, args: Mapping[str, str]
    ) -> None:
        self.command, self.container_id, self.netns, self.ifname, self.args = (
            command,
            container_id,
            netns,
            ifname,
            args,
        )


class PluginConfig(Record):
    __slots__ = (
        "aliases",
        "domain",
        "network",
        "prev_result",
        "resolv_conf",
        "rewrite_resolv_conf",
        "socket",
        "version",
    )

    def __init__(
        self,
        version: str,
        network: str,
        socket: str = DEFAULT_SOCKET,
        domain: str | None = None,
        rewrite_resolv_conf: bool = True,
        resolv_conf: str | None = None,
        aliases: tuple[str, ...] = (),
        prev_result: Mapping[str, Any] | None = None,
    ) -> None:
        self.version, self.network, self.socket, self.domain = version, network, socket, domain
        self.rewrite_resolv_conf, self.resolv_conf = rewrite_resolv_conf, resolv_conf
        self.aliases, self.prev_result = aliases, prev_result


# ---- parsing (pure) -------------------------------------------------------------------------------------


def parse_cni_args(text: str) -> dict[str, str]:
    """`CNI_ARGS` (`K1=V1;K2=V2`) as a dict; an item without `=` is an error."""
    out: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS item {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """The CNI_* variables; ADD and CHECK need the container id, netns and interface name, DEL the id."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_COMMAND is {command!r}; {PROGRAM} supports {', '.join(COMMANDS)}",
        )
    env = CniEnv(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
    )
    missing = [name for name in REQUIRED_ENV.get(command, ()) if not environ.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"{command} needs {', '.join(missing)} in the environment")
    return env


def decode_config(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODING_FAILURE, f"the network configuration on stdin is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CniError(DECODING_FAILURE, "the network configuration on stdin must be a JSON object")
    return doc


def config_version(doc: Mapping[str, Any]) -> str:
    version = doc.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported; {PROGRAM} supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    return str(version)


def parse_config(doc: Mapping[str, Any], command: str) -> PluginConfig:
    """The plugin's configuration (stdin) for ADD, DEL or CHECK.

    DEL must be able to clean up after an ADD that failed, so it only needs the version and network name;
    other keys it cannot use are ignored there rather than refused.
    """
    version = config_version(doc)
    network = doc.get("name")
    if not isinstance(network, str) or not network:
        raise CniError(INVALID_CONFIG, 'the network configuration has no "name" (the network\'s name)')
    if command == "DEL":
        socket = doc.get("socket")
        return PluginConfig(
            version, network, socket if isinstance(socket, str) and socket else DEFAULT_SOCKET
        )
    unknown = sorted(set(doc) - STANDARD_KEYS - set(PLUGIN_KEYS))
    if unknown:
        raise CniError(
            UNSUPPORTED_FIELD,
            f"unknown key {unknown[0]!r} = {json.dumps(doc[unknown[0]])} in the {PROGRAM} configuration; "
            f"its keys are {', '.join(PLUGIN_KEYS)}",
        )
    for key, kind in PLUGIN_KEYS.items():
        if key in doc and not isinstance(doc[key], kind):
            expected = "true or false" if kind is bool else "a string"
            raise CniError(INVALID_CONFIG, f"{PROGRAM} configuration key {key!r} must be {expected}")
    prev = doc.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be a JSON object")
    if prev is None and command in ("ADD", "CHECK"):
        raise CniError(
            INVALID_CONFIG,
            f"{PROGRAM} is a chained plugin and got no prevResult: list it after the plugins that "
            "create the interface and assign addresses (e.g. bridge with host-local)",
        )
    return PluginConfig(
        version=version,
        network=network,
        socket=doc.get("socket") or DEFAULT_SOCKET,
        domain=doc.get("domain") or None,
        rewrite_resolv_conf=doc.get("rewriteResolvConf", True),
        resolv_conf=doc.get("resolvConf") or None,
        aliases=_aliases(doc.get("runtimeConfig"), network),
        prev_result=prev,
    )


def _aliases(runtime_config: Any, network: str) -> tuple[str, ...]:
    if runtime_config is None:
        return ()
    aliases = runtime_config.get("aliases") if isinstance(runtime_config, dict) else None
    if aliases is None:
        return ()
    if not isinstance(aliases, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig.aliases must map network names to lists of names")
    mine = aliases.get(network, [])
    if not isinstance(mine, list) or not all(isinstance(a, str) for a in mine):
        raise CniError(INVALID_CONFIG, f"runtimeConfig.aliases[{network!r}] must be a list of names")
    return tuple(mine)


def result_addresses(prev_result: Mapping[str, Any]) -> list[str]:
    """Addresses of `prevResult.ips` on container-side interfaces (those with a `sandbox`), in order.

    An ip without an `interface` index is taken as the container's (the spec makes the index optional).
    """
    interfaces = prev_result.get("interfaces") or []
    ips = prev_result.get("ips") or []
    if not isinstance(interfaces, list) or not isinstance(ips, list):
        raise CniError(INVALID_CONFIG, "prevResult.interfaces and prevResult.ips must be lists")
    out: list[str] = []
    for n, ip in enumerate(ips):
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            raise CniError(INVALID_CONFIG, f'prevResult.ips[{n}] has no "address" string')
        index = ip.get("interface")
        if index is not None:
            if not isinstance(index, int) or not 0 <= index < len(interfaces):
                raise CniError(
                    INVALID_CONFIG,
                    f"prevResult.ips[{n}].interface {index!r} is not an index into prevResult.interfaces "
                    f"({len(interfaces)} entries)",
                )
            interface = interfaces[index]
            if not isinstance(interface, dict) or not interface.get("sandbox"):
                continue
        out.append(ip["address"])
    return out


def registration(env: CniEnv, conf: PluginConfig) -> Registration:
    """What ADD asks the daemon to join."""
    assert conf.prev_result is not None
    addresses = result_addresses(conf.prev_result)
    if not addresses:
        raise CniError(
            INVALID_CONFIG,
            "prevResult has no address on a container interface: list resolver-cni after the plugin "
            "that assigns addresses",
        )
    try:
        ipv4, ipv6 = split_addresses(addresses)
    except AdapterError as exc:
        raise CniError(INVALID_CONFIG, f"prevResult: {exc}") from None
    name = env.args.get("K8S_POD_NAME") or env.container_id[:12]
    return Registration(
        network=conf.network,
        netns=env.netns,
        endpoint=env.container_id,
        name=name,
        aliases=conf.aliases,
        ipv4=ipv4,
        ipv6=ipv6,
        resolv_conf=conf.resolv_conf,
        rewrite_resolv_conf=conf.rewrite_resolv_conf,
        domain=conf.domain,
    )


def version_result(doc: Mapping[str, Any]) -> dict[str, Any]:
    version = doc.get("cniVersion")
    return {
        "cniVersion": version if version in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1],
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def check_matches(registered: Mapping[str, Any], reg: Registration) -> None:
    """CHECK: the daemon's endpoint must have prevResult's addresses and the same netns."""
    problems = []
    if sorted(registered.get("ipv4", [])) != sorted(reg.ipv4):
        problems.append(f"IPv4 {registered.get('ipv4')} instead of {list(reg.ipv4)}")
    if sorted(registered.get("ipv6", [])) != sorted(reg.ipv6):
        problems.append(f"IPv6 {registered.get('ipv6')} instead of {list(reg.ipv6)}")
    if registered.get("netns") != reg.netns:
        problems.append(f"netns {registered.get('netns')!r} instead of {reg.netns!r}")
    if problems:
        raise CniError(
            CHECK_FAILED,
            f"endpoint {reg.endpoint!r} on {reg.network!r} is registered with {'; '.join(problems)}",
        )


# ---- running a command ----------------------------------------------------------------------------------


def execute(
    environ: Mapping[str, str], raw: bytes, control: Callable[[str], Control] = Control
) -> dict[str, Any] | None:
    """Run the command in `environ` on configuration `raw`; returns what goes to stdout (None: nothing)."""
    env = parse_env(environ)
    doc = decode_config(raw)
    if env.command == "VERSION":
        return version_result(doc)
    conf = parse_config(doc, env.command)
    daemon = control(conf.socket)
    try:
        if env.command == "DEL":
            daemon.unregister(env.container_id, conf.network)
            return None
        reg = registration(env, conf)
        if env.command == "CHECK":
            check_matches(daemon.registered(reg.endpoint, reg.network), reg)
            return None
        daemon.register(reg)
    except AdapterError as exc:
        raise CniError(INVALID_CONFIG if exc.kind == "config" else DAEMON_FAILURE, str(exc)) from None
    assert conf.prev_result is not None
    return {**conf.prev_result, "cniVersion": conf.version}


def _reported_version(raw: bytes) -> str:
    try:
        version = json.loads(raw).get("cniVersion")
    except (ValueError, UnicodeDecodeError, AttributeError):
        version = None
    return version if version in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]


def _read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read()
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read the configuration from stdin: {exc}") from None


def main() -> int:
    raw = b""
    try:
        raw = _read_stdin()
        output = execute(os.environ, raw)
    except CniError as exc:
        sys.stdout.write(json.dumps(exc.document(_reported_version(raw))) + "\n")
        return 1
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
