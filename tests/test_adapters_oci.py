"""The OCI hook's parsing, table-driven: the state on stdin, the bundle's config.json, addresses from
/proc/PID/net, the stage, the registrations it builds, and the resolv.conf it picks (never a symlink).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from resolver.adapters import oci_hook as hook
from resolver.adapters.oci_hook import BundleConfig, HookError, Options, State

CID = "3f7456836610aa00bb11cc22dd33ee44ff5566778899aabbccddeeff00112233"

# A podman 4.3 config.json, reduced to what the hook reads.
PODMAN_CONFIG = {
    "hostname": "3f7456836610",
    "root": {"path": "/var/lib/containers/storage/overlay/abc/merged"},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": "/run/containers/x/userdata/resolv.conf",
        },
        {"destination": "/etc/hosts", "type": "bind", "source": "/run/containers/x/userdata/hosts"},
    ],
    "linux": {
        "namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/run/netns/netns-1234"},
            {"type": "mount"},
        ]
    },
    "annotations": {"io.container.manager": "libpod", "io.resolver.networks": "appnet"},
}

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.89.50.0/24 2 0 2
        |-- 10.89.50.0
           /24 link UNICAST
        |-- 10.89.50.12
           /32 host LOCAL
        |-- 10.89.50.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.89.50.0/24 2 0 2
        |-- 10.89.50.12
           /32 host LOCAL
        |-- 192.168.7.9
           /32 host LOCAL
"""

IF_INET6 = """fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
20010db8000000010000000000000abc 05 40 00 80     eth1
fec00000000000000000000000000001 05 40 40 80     eth1
"""


def state_doc(**extra: Any) -> dict[str, Any]:
    return {"ociVersion": "1.0.2-dev", "id": CID, "status": "creating", "pid": 4242, "bundle": "/b", **extra}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (state_doc(), State(CID, "creating", 4242, "/b", {})),
        (
            state_doc(status="stopped", pid=None, annotations={"io.resolver.name": "web"}),
            State(CID, "stopped", None, "/b", {"io.resolver.name": "web"}),
        ),
        ({"id": "c1"}, State("c1", "", None, "", {})),
    ],
)
def test_state(doc: dict[str, Any], expected: State) -> None:
    assert hook.parse_state(json.dumps(doc).encode()) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps(state_doc(id="")).encode(), 'has no "id"'),
        (json.dumps(state_doc(pid=-1)).encode(), "is not a process id"),
        (json.dumps(state_doc(pid="12")).encode(), "is not a process id"),
        (json.dumps(state_doc(pid=True)).encode(), "is not a process id"),
        (json.dumps(state_doc(bundle=3)).encode(), "must be a path"),
        (json.dumps(state_doc(annotations={"a": 1})).encode(), "annotations must map names to strings"),
    ],
)
def test_state_errors(raw: bytes, message: str) -> None:
    with pytest.raises(HookError, match=message):
        hook.parse_state(raw)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            PODMAN_CONFIG,
            BundleConfig(
                hostname="3f7456836610",
                netns_path="/run/netns/netns-1234",
                has_netns=True,
                resolv_conf_source="/run/containers/x/userdata/resolv.conf",
                root="/var/lib/containers/storage/overlay/abc/merged",
                annotations={"io.container.manager": "libpod", "io.resolver.networks": "appnet"},
            ),
        ),
        (  # runc spec default: a fresh netns (no path), rootfs relative to the bundle, no resolv.conf mount
            {"root": {"path": "rootfs"}, "hostname": "runc", "linux": {"namespaces": [{"type": "network"}]}},
            BundleConfig(hostname="runc", has_netns=True, root="rootfs"),
        ),
        ({"linux": {"namespaces": [{"type": "pid"}]}}, BundleConfig(has_netns=False)),  # host network
        ({}, BundleConfig()),
    ],
)
def test_bundle_config(doc: dict[str, Any], expected: BundleConfig) -> None:
    assert hook.parse_bundle_config(doc) == expected


def test_ipv4_from_fib_trie_keeps_local_addresses_once_without_loopback() -> None:
    assert hook.ipv4_from_fib_trie(FIB_TRIE) == ["10.89.50.12", "192.168.7.9"]
    assert hook.ipv4_from_fib_trie("") == []


def test_ipv6_from_if_inet6_keeps_global_and_site_scope() -> None:
    assert hook.ipv6_from_if_inet6(IF_INET6) == ["fd00::2", "2001:db8:0:1::abc", "fec0::1"]
    assert hook.ipv6_from_if_inet6("short line\n") == []


def test_addresses_of_this_process_match_the_kernel() -> None:
    """Against this netns: every address `ip -4 addr` shows (but loopback) is found, and nothing else."""
    import subprocess

    shown = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        pytest.skip("needs the `ip` command")
    expected = sorted(
        {a["local"] for link in json.loads(shown.stdout) for a in link["addr_info"]} - {"127.0.0.1"}
    )
    found = hook.read_addresses(os.getpid())
    assert sorted(a for a in found if ":" not in a) == [a for a in expected if not a.startswith("127.")]


@pytest.mark.parametrize(
    ("status", "stage", "expected"),
    [
        ("creating", None, "createRuntime"),
        ("created", None, "createRuntime"),
        ("stopped", None, "poststop"),
        ("running", "poststart", "poststart"),
        ("stopped", "createRuntime", "createRuntime"),
    ],
)
def test_stage(status: str, stage: str | None, expected: str) -> None:
    assert hook.stage_of(State(CID, status, 1, "/b"), Options(stage=stage)) == expected


def test_unknown_stage_is_an_error() -> None:
    with pytest.raises(HookError, match="pass --stage"):
        hook.stage_of(State(CID, "running", 1, "/b"), Options())


@pytest.mark.parametrize(
    ("annotations", "config", "expected"),
    [
        (  # podman: name and aliases from annotations, netns from config.json
            {"io.resolver.name": "web", "io.resolver.aliases": "www;api", "io.resolver.networks": "appnet"},
            hook.parse_bundle_config(PODMAN_CONFIG),
            [
                {
                    "network": "appnet",
                    "name": "web",
                    "aliases": ["www", "api"],
                    "netns": "/run/netns/netns-1234",
                }
            ],
        ),
        (  # no name annotation: the hostname; two networks
            {"io.resolver.networks": "a b"},
            BundleConfig(hostname="box", has_netns=True),
            [
                {"network": "a", "name": "box", "netns": "/proc/4242/ns/net"},
                {"network": "b", "name": "box", "netns": "/proc/4242/ns/net"},
            ],
        ),
        (  # nothing: the short id, on the default network
            {},
            BundleConfig(has_netns=True),
            [{"network": "default", "name": "3f7456836610", "ipv4": ["10.0.0.2"], "ipv6": ["fd00::2"]}],
        ),
    ],
)
def test_registrations(
    annotations: dict[str, str], config: BundleConfig, expected: list[dict[str, Any]]
) -> None:
    state = State(CID, "creating", 4242, "/b", annotations)
    regs = hook.registrations(state, config, ["10.0.0.2", "fd00::2"], "/r", Options())
    bodies = [r.body() for r in regs]
    assert [{key: body[key] for key in want} for body, want in zip(bodies, expected, strict=True)] == expected
    assert all(b["endpoint"] == CID and b["resolv_conf"] == "/r" for b in bodies)


def test_state_annotations_win_over_config_annotations() -> None:
    config = BundleConfig(
        has_netns=True, annotations={"io.resolver.name": "old", "io.resolver.networks": "n1"}
    )
    state = State(CID, "creating", 1, "/b", {"io.resolver.name": "new"})
    (reg,) = hook.registrations(state, config, [], None, Options())
    assert (reg.name, reg.network) == ("new", "n1")


def test_host_network_container_is_refused() -> None:
    with pytest.raises(HookError, match="shares the runtime's network namespace"):
        hook.registrations(
            State(CID, "creating", 1, "/b"), BundleConfig(has_netns=False), [], None, Options()
        )


def test_resolv_conf_prefers_the_bind_mount_source(tmp_path: Path) -> None:
    config = BundleConfig(has_netns=True, resolv_conf_source="/src/resolv.conf", root=str(tmp_path))
    assert hook.resolv_conf_path(State(CID, "creating", 1, str(tmp_path)), config) == "/src/resolv.conf"


def test_resolv_conf_below_a_relative_root(tmp_path: Path) -> None:
    (tmp_path / "rootfs" / "etc").mkdir(parents=True)
    (tmp_path / "rootfs" / "etc" / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    config = BundleConfig(has_netns=True, root="rootfs")
    expected = str(tmp_path / "rootfs" / "etc" / "resolv.conf")
    assert hook.resolv_conf_path(State(CID, "creating", 1, str(tmp_path)), config) == expected
    assert hook.resolv_conf_path(State(CID, "creating", 1, str(tmp_path)), BundleConfig(root="none")) is None


@pytest.mark.parametrize("link", ["etc", "etc/resolv.conf"])
def test_resolv_conf_through_a_symlink_is_refused(tmp_path: Path, link: str) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "resolv.conf").write_text("host file\n")
    target = rootfs / link
    if target.is_dir():
        target.rmdir()
    target.symlink_to(tmp_path / "host" / ("" if link == "etc" else "resolv.conf"))
    with pytest.raises(HookError, match="is a symlink"):
        hook.resolv_conf_path(State(CID, "creating", 1, str(tmp_path)), BundleConfig(root=str(rootfs)))
    assert (tmp_path / "host" / "resolv.conf").read_text() == "host file\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], Options(socket=os.environ.get("RESOLVER_SOCKET") or hook.DEFAULT_SOCKET)),
        (
            ["--socket", "/s", "--network", "n", "--domain", "d.test", "--stage", "poststop"],
            Options("/s", "n", "d.test", "poststop"),
        ),
    ],
)
def test_arguments(argv: list[str], expected: Options) -> None:
    assert hook.parse_args(argv) == expected


def test_arguments_with_equals_sign() -> None:
    assert hook.parse_args(["--socket=/s", "--stage=createRuntime"]) == Options("/s", stage="createRuntime")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sock", "/s"], "unknown argument '--sock'"),
        (["--socket"], "--socket needs a value"),
        (["--stage", "prestop"], "--stage must be one of"),
        (["positional"], "unknown argument 'positional'"),
    ],
)
def test_argument_errors(argv: list[str], message: str) -> None:
    with pytest.raises(HookError, match=message):
        hook.parse_args(argv)
