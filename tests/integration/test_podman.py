"""`resolver-oci-hook` with a real runtime: podman (runc, cgroupfs) loads the shipped hooks.d file, and
containers that carry `io.resolver.networks` resolve each other by name through 127.0.0.11.

Inside the containers: busybox `nslookup` and glibc `getent hosts` (both read the resolv.conf the daemon
rewrote in place through the bind-mount source). Stopping a container (poststop) removes its name;
starting it again (a new netns) makes it resolvable again; a container without the annotation is left
alone. A second test runs `resolver-cni` inside podman's own CNI chain (libcni as the runtime).

Podman is contained in a temporary directory (`podmanenv.Podman`); everything is `rt5`-prefixed and
removed at teardown, and `net.ipv4.ip_forward` is put back.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest

from . import podmanenv
from .nstools import LISTEN, VENV_BIN, Daemon, DaemonFactory, wait_until
from .test_cni import IP_FORWARD, PREFIX, free_subnet

HOOK = VENV_BIN / "resolver-oci-hook"


@pytest.fixture(scope="module")
def podman_env() -> Iterator[podmanenv.Podman]:
    lacking = podmanenv.missing()
    if lacking:
        pytest.skip(f"the podman tests need {', '.join(lacking)}")
    saved_forward = IP_FORWARD.read_text()
    env = podmanenv.Podman(PREFIX)
    try:
        env.import_image()
        yield env
    finally:
        env.cleanup()
        IP_FORWARD.write_text(saved_forward)


@pytest.fixture
def podman(podman_env: podmanenv.Podman, daemon: DaemonFactory) -> Iterator[tuple[podmanenv.Podman, Daemon]]:
    """The contained podman, with the shipped hook pointed at a fresh daemon; containers removed after."""
    d = daemon()
    podman_env.write_hook(HOOK, ["--socket", str(d.socket)])
    try:
        yield podman_env, d
    finally:
        podman_env.remove_containers()


def nslookup_in(pm: podmanenv.Podman, container: str, name: str, *server: str) -> list[str]:
    """Addresses busybox `nslookup NAME [SERVER]` prints inside the container (default: resolv.conf's)."""
    result = pm.exec(container, "nslookup", name, *server)
    lines = result.stdout.splitlines()[2:]  # "Server:" and "Address: <server>:53"
    return [m.group(1) for line in lines if (m := re.match(r"Address:\s+(\S+)$", line))]


def getent_in(pm: podmanenv.Podman, container: str, name: str) -> list[str]:
    result = pm.exec(container, "getent", "hosts", name)
    return [line.split()[0] for line in result.stdout.splitlines()] if result.returncode == 0 else []


def joined_names(d: Daemon) -> set[str]:
    return {endpoint["name"] for sandbox in d.json("ls") for endpoint in sandbox["endpoints"]}


def address_of(pm: podmanenv.Podman, container: str, network: str) -> str:
    address: str = pm.inspect(container)["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert address, f"{container} has no address on {network}"
    return address


def test_two_containers_resolve_each_other_and_follow_stop_and_restart(
    podman: tuple[podmanenv.Podman, Daemon],
) -> None:
    pm, d = podman
    net = pm.network(f"{PREFIX}pn{secrets.token_hex(3)}", str(free_subnet()))
    joined = ("--network", net, "--annotation", "io.resolver.networks=appnet")
    a = pm.run(f"{PREFIX}-alpha", *joined, "--annotation", "io.resolver.name=alpha",
               "--annotation", "io.resolver.aliases=first;one")  # fmt: skip
    b = pm.run(f"{PREFIX}-beta", *joined, "--hostname", "beta")  # the name falls back to the hostname
    address_a, address_b = address_of(pm, a, net), address_of(pm, b, net)

    assert "nameserver 127.0.0.11" in pm.exec(a, "cat", "/etc/resolv.conf").stdout
    assert nslookup_in(pm, a, "beta") == [address_b]
    assert getent_in(pm, a, "beta") == [address_b]
    assert nslookup_in(pm, b, "alpha") == [address_a]
    assert nslookup_in(pm, b, "first") == [address_a]
    assert getent_in(pm, b, "one") == [address_a]
    assert pm.exec(a, "ping", "-c1", "-W2", "beta").returncode == 0

    pm("stop", "-t", "0", b)  # poststop: leave
    assert nslookup_in(pm, a, "beta") == []
    assert getent_in(pm, a, "beta") == []
    assert joined_names(d) == {"alpha"}

    old_netns = pm.inspect(b)["NetworkSettings"]["SandboxKey"]
    pm("start", b)  # a new netns: createRuntime joins again
    new_address_b = address_of(pm, b, net)
    assert pm.inspect(b)["NetworkSettings"]["SandboxKey"] != old_netns
    assert wait_until(lambda: nslookup_in(pm, a, "beta") == [new_address_b], timeout=10)
    assert getent_in(pm, a, "beta") == [new_address_b]
    assert nslookup_in(pm, b, "alpha") == [address_a]
    assert joined_names(d) == {"alpha", "beta"}


def test_container_without_the_annotation_is_left_alone(podman: tuple[podmanenv.Podman, Daemon]) -> None:
    pm, d = podman
    net = pm.network(f"{PREFIX}pn{secrets.token_hex(3)}", str(free_subnet()))
    plain = pm.run(f"{PREFIX}-plain", "--network", net)
    assert "127.0.0.11" not in pm.exec(plain, "cat", "/etc/resolv.conf").stdout
    assert d.json("ls") == []


def test_resolver_cni_in_podmans_own_cni_chain(podman: tuple[podmanenv.Podman, Daemon]) -> None:
    """libcni (inside podman) runs bridge + host-local + resolver-cni: container names come as K8S_POD_NAME,
    network aliases through the `aliases` capability."""
    pm, d = podman
    pm.add_cni_plugin(VENV_BIN / "resolver-cni")
    ours = {"type": "resolver-cni", "socket": str(d.socket), "rewriteResolvConf": False,
            "capabilities": {"aliases": True}}  # fmt: skip
    net = pm.network(f"{PREFIX}pc{secrets.token_hex(3)}", str(free_subnet()), [ours])
    a = pm.run(f"{PREFIX}-cni-a", "--network", net, "--network-alias", "web")
    b = pm.run(f"{PREFIX}-cni-b", "--network", net)
    address_a, address_b = address_of(pm, a, net), address_of(pm, b, net)
    assert nslookup_in(pm, b, a, LISTEN) == [address_a]
    assert nslookup_in(pm, b, "web", LISTEN) == [address_a]
    assert nslookup_in(pm, a, b, LISTEN) == [address_b]
    pm("stop", "-t", "0", b)  # podman runs DEL through the chain
    assert nslookup_in(pm, a, b, LISTEN) == []
    assert joined_names(d) == {a}
