"""The `resolver` command: `serve` runs the daemon; every other command is a client of its control API.

Exit status: 0 on success, 1 with a message on stderr when the daemon refuses or cannot be reached,
2 on a usage error. Client commands take --socket PATH (also RESOLVER_SOCKET). Only `serve` imports
the daemon; the client commands stay light.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from typing import Any

import click

from resolver.control.client import DEFAULT_SOCKET, ControlError, call

socket_option = click.option(
    "--socket",
    "socket_path",
    envvar="RESOLVER_SOCKET",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="Control socket of the daemon.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _request(method: str, path: str, socket_path: str, body: Any = None) -> Any:
    try:
        return call(method, path, body, socket_path)
    except ControlError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _print(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="resolver")
def main() -> None:
    """Embedded DNS service-discovery resolver for container sandboxes (127.0.0.11 in every netns)."""


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="RESOLVER_CONFIG",
    help="TOML settings file (see conf/resolver.toml).",
)
@click.option("--socket", "socket_path", default=None, help="Control socket path.")
@click.option("--state-dir", default=None, help="Directory for persisted state.")
@click.option("--host-resolv-conf", default=None, help="File whose servers are the default upstreams.")
@click.option("--listen-mode", type=click.Choice(["direct", "redirect"]), default=None)
@click.option("--log-level", default=None)
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None)
def serve(
    config_file: str | None,
    socket_path: str | None,
    state_dir: str | None,
    host_resolv_conf: str | None,
    listen_mode: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run the daemon in the foreground."""
    from resolver.config import ConfigError, load
    from resolver.daemon_main import run

    flags = {
        "socket": socket_path,
        "state_dir": state_dir,
        "host_resolv_conf": host_resolv_conf,
        "listen_mode": listen_mode,
        "log_level": log_level,
        "log_format": log_format,
    }
    try:
        settings = load(config_file, dict(os.environ), flags)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(run(settings, config_file, flags))


# ---- networks -----------------------------------------------------------------------------------------


@main.group()
def network() -> None:
    """Create, remove and list networks."""


@network.command("create")
@click.argument("name")
@click.option("--internal", is_flag=True, help="Never forward queries from this network.")
@click.option("--domain", default=None, help="DNS domain answered authoritatively for this network.")
@click.option("--dns", multiple=True, help="Upstream server for this network (queried from the sandbox).")
@click.option("--ttl", type=int, default=None, help="TTL of local answers (seconds, default 5).")
@click.option(
    "--scope",
    type=click.Choice(["local", "global"]),
    default="local",
    show_default=True,
    help="global: the network spans hosts; its registry is shared (needs registry.backend = etcd).",
)
@socket_option
def network_create(
    name: str,
    internal: bool,
    domain: str | None,
    dns: tuple[str, ...],
    ttl: int | None,
    scope: str,
    socket_path: str,
) -> None:
    """Create network NAME."""
    body: dict[str, Any] = {"name": name, "internal": internal, "dns": list(dns)}
    if scope != "local":
        body["scope"] = scope
    if domain is not None:
        body["domain"] = domain
    if ttl is not None:
        body["ttl"] = ttl
    _request("POST", "/v1/networks", socket_path, body)
    click.echo(name)


@network.command("rm")
@click.argument("name")
@socket_option
def network_rm(name: str, socket_path: str) -> None:
    """Remove network NAME (it must have no endpoints)."""
    _request("DELETE", f"/v1/networks/{_q(name)}", socket_path)
    click.echo(name)


@network.command("ls")
@json_option
@socket_option
def network_ls(as_json: bool, socket_path: str) -> None:
    """List networks."""
    data = _request("GET", "/v1/networks", socket_path)
    if as_json:
        return _print(data)
    rows = [
        [
            n["name"],
            n["domain"] or "-",
            "yes" if n["internal"] else "no",
            str(n["endpoints"]),
            ",".join(n["services"]) or "-",
        ]
        for n in data
    ]
    _table(rows, ["NAME", "DOMAIN", "INTERNAL", "ENDPOINTS", "SERVICES"])
    return None


# ---- endpoints ----------------------------------------------------------------------------------------


@main.command()
@click.argument("network_name", metavar="NETWORK")
@click.option("--netns", required=True, help="Namespace name (/run/netns/NAME) or path (/proc/PID/ns/net).")
@click.option("--endpoint", "endpoint_id", required=True, help="Endpoint id, unique on the network.")
@click.option("--name", required=True, help="Primary name.")
@click.option("--alias", multiple=True)
@click.option("--hostname", default=None)
@click.option("--ipv4", multiple=True)
@click.option("--ipv6", multiple=True)
@click.option("--service", default=None, help="Service this endpoint is a task of.")
@click.option("--port", multiple=True, help="Named port NAME:PROTO:NUMBER (published as SRV).")
@click.option("--resolv-conf", default=None, help="resolv.conf to rewrite (default: derived from --netns).")
@click.option("--dns", multiple=True, help="Upstream server for this endpoint (queried from the sandbox).")
@socket_option
def join(
    network_name: str,
    netns: str,
    endpoint_id: str,
    name: str,
    alias: tuple[str, ...],
    hostname: str | None,
    ipv4: tuple[str, ...],
    ipv6: tuple[str, ...],
    service: str | None,
    port: tuple[str, ...],
    resolv_conf: str | None,
    dns: tuple[str, ...],
    socket_path: str,
) -> None:
    """Join a sandbox's endpoint to NETWORK; returns once the sandbox answers on 127.0.0.11."""
    body = {
        "network": network_name,
        "netns": netns,
        "endpoint": endpoint_id,
        "name": name,
        "aliases": list(alias),
        "hostname": hostname,
        "ipv4": list(ipv4),
        "ipv6": list(ipv6),
        "service": service,
        "ports": list(port),
        "resolv_conf": resolv_conf,
        "dns": list(dns),
    }
    _request("POST", "/v1/endpoints", socket_path, body)
    click.echo(endpoint_id)


@main.command()
@click.argument("endpoint_id", metavar="ENDPOINT")
@click.option(
    "--network", "network_name", default=None, help="Needed only when the id is on several networks."
)
@socket_option
def leave(endpoint_id: str, network_name: str | None, socket_path: str) -> None:
    """Remove an endpoint; the sandbox's last leave closes its listener and restores resolv.conf."""
    query = f"?network={_q(network_name)}" if network_name else ""
    _request("DELETE", f"/v1/endpoints/{_q(endpoint_id)}{query}", socket_path)
    click.echo(endpoint_id)


# ---- services -----------------------------------------------------------------------------------------


@main.group()
def service() -> None:
    """Create and remove services."""


@service.command("create")
@click.argument("network_name", metavar="NETWORK")
@click.argument("name")
@click.option("--vip", multiple=True, help="Virtual IP answered for NAME in vip mode.")
@click.option("--mode", type=click.Choice(["vip", "dnsrr"]), default="vip", show_default=True)
@socket_option
def service_create(network_name: str, name: str, vip: tuple[str, ...], mode: str, socket_path: str) -> None:
    """Create service NAME on NETWORK."""
    _request(
        "POST",
        f"/v1/networks/{_q(network_name)}/services",
        socket_path,
        {"name": name, "vips": list(vip), "mode": mode},
    )
    click.echo(name)


@service.command("rm")
@click.argument("network_name", metavar="NETWORK")
@click.argument("name")
@socket_option
def service_rm(network_name: str, name: str, socket_path: str) -> None:
    """Remove service NAME from NETWORK."""
    _request("DELETE", f"/v1/networks/{_q(network_name)}/services/{_q(name)}", socket_path)
    click.echo(name)


# ---- reading ------------------------------------------------------------------------------------------


@main.command("ls")
@json_option
@socket_option
def ls(as_json: bool, socket_path: str) -> None:
    """List sandboxes and their endpoints."""
    data = _request("GET", "/v1/sandboxes", socket_path)
    if as_json:
        return _print(data)
    rows = []
    for sb in data:
        for ep in sb["endpoints"]:
            addresses = ",".join(ep["ipv4"] + ep["ipv6"]) or "-"
            rows.append([sb["netns"], ep["network"], ep["id"], ep["name"], addresses])
    _table(rows, ["NETNS", "NETWORK", "ENDPOINT", "NAME", "ADDRESSES"])
    return None


@main.command()
@click.argument("kind", type=click.Choice(["network", "sandbox", "endpoint", "service"]))
@click.argument("ident", metavar="ID")
@click.option("--network", "network_name", default=None, help="For endpoint/service: the network.")
@json_option
@socket_option
def inspect(kind: str, ident: str, network_name: str | None, as_json: bool, socket_path: str) -> None:
    """Show one object. A service is NETWORK/NAME (or NAME with --network)."""
    if kind == "network":
        path = f"/v1/networks/{_q(ident)}"
    elif kind == "sandbox":
        path = f"/v1/sandbox?netns={_q(ident)}"
    elif kind == "endpoint":
        path = f"/v1/endpoints/{_q(ident)}" + (f"?network={_q(network_name)}" if network_name else "")
    else:
        net, _, name = ident.rpartition("/")
        net = net or network_name or ""
        if not net:
            raise click.UsageError("a service is NETWORK/NAME, or NAME with --network")
        path = f"/v1/networks/{_q(net)}/services/{_q(name)}"
    data = _request("GET", path, socket_path)
    _print(data) if as_json else _describe(data)


def _describe(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            click.echo(f"{key}:")
            for item in value:
                click.echo("  - " + ", ".join(f"{k}={v}" for k, v in item.items() if v not in (None, [], "")))
        elif isinstance(value, list):
            click.echo(f"{key}: {', '.join(map(str, value)) or '-'}")
        else:
            click.echo(f"{key}: {value if value is not None else '-'}")


@main.command()
@click.argument("name")
@click.argument("qtype", metavar="[TYPE]", default="A")
@click.option("--netns", required=True, help="Resolve as this sandbox would.")
@json_option
@socket_option
def query(name: str, qtype: str, netns: str, as_json: bool, socket_path: str) -> None:
    """Resolve NAME as the sandbox would, and say which rule answered."""
    data = _request("POST", "/v1/query", socket_path, {"name": name, "type": qtype, "netns": netns})
    if as_json:
        return _print(data)
    click.echo(f"rule: {data['rule']}  rcode: {data['rcode']}")
    for section in ("answer", "authority", "additional"):
        for line in data[section]:
            click.echo(f"{section}: {line}")
    return None


@main.command()
@json_option
@socket_option
def status(as_json: bool, socket_path: str) -> None:
    """Show the daemon's status."""
    data = _request("GET", "/v1/status", socket_path)
    _print(data) if as_json else _describe(data)


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")
