"""The CNI plugin's parsing, table-driven: CNI_ARGS, the environment, the plugin configuration, prevResult
addresses, the join it builds, CHECK's comparison, the VERSION answer, and the error codes of bad input.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from resolver.adapters import cni
from resolver.adapters.cni import CniError

NETNS = "/var/run/netns/rt5-x"
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee0123456789", "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0"}

# A bridge + host-local result, as the bridge plugin prints it (1.0.0) and as 0.4.0 has it ("version").
PREV_1_0 = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "rt5br", "mac": "86:58:00:00:00:01"},
        {"name": "veth1234", "mac": "86:58:00:00:00:02"},
        {"name": "eth0", "mac": "12:80:00:00:00:03", "sandbox": NETNS},
    ],
    "ips": [
        {"interface": 2, "address": "10.88.77.2/24", "gateway": "10.88.77.1"},
        {"interface": 2, "address": "fd00:77::2/64", "gateway": "fd00:77::1"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}
PREV_0_4 = {
    "cniVersion": "0.4.0",
    "interfaces": PREV_1_0["interfaces"],
    "ips": [{"version": "4", "interface": 2, "address": "10.89.60.2/24", "gateway": "10.89.60.1"}],
    "dns": {"nameservers": ["10.89.60.1"]},
}


def conf(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "rt5net", "type": "resolver-cni", "prevResult": PREV_1_0, **extra}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("IgnoreUnknown=1", {"IgnoreUnknown": "1"}),
        (
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web1",
            {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web1"},
        ),
        ("K8S_POD_NAME=a=b;", {"K8S_POD_NAME": "a=b"}),
        ("EMPTY=", {"EMPTY": ""}),
    ],
)
def test_cni_args(text: str, expected: dict[str, str]) -> None:
    assert cni.parse_cni_args(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=x", "A=1;junk"])
def test_cni_args_refuses_items_without_key_and_value(text: str) -> None:
    with pytest.raises(CniError) as info:
        cni.parse_cni_args(text)
    assert info.value.code == cni.INVALID_ENVIRONMENT


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "CNI_COMMAND is ''"),
        ({**ENV, "CNI_COMMAND": "GC"}, "CNI_COMMAND is 'GC'"),
        ({**ENV, "CNI_NETNS": ""}, "ADD needs CNI_NETNS"),
        ({"CNI_COMMAND": "ADD"}, "ADD needs CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME"),
        ({"CNI_COMMAND": "DEL"}, "DEL needs CNI_CONTAINERID"),
        ({"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "x"}, "CHECK needs CNI_NETNS"),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(CniError) as info:
        cni.parse_env(env)
    assert info.value.code == cni.INVALID_ENVIRONMENT
    assert message in info.value.msg


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CNI_COMMAND": "VERSION"}, cni.CniEnv("VERSION", "", "", "", {})),
        ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1"}, cni.CniEnv("DEL", "c1", "", "", {})),
        (
            {**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web1"},
            cni.CniEnv(
                "ADD", "c0ffee0123456789", NETNS, "eth0", {"IgnoreUnknown": "1", "K8S_POD_NAME": "web1"}
            ),
        ),
    ],
)
def test_env(env: dict[str, str], expected: cni.CniEnv) -> None:
    assert cni.parse_env(env) == expected


@pytest.mark.parametrize(
    ("doc", "command", "expected"),
    [
        (conf(), "ADD", {"network": "rt5net", "socket": cni.DEFAULT_SOCKET, "rewrite_resolv_conf": True}),
        (
            conf(
                socket="/tmp/s.sock", domain="corp.test", rewriteResolvConf=False, resolvConf="/x/resolv.conf"
            ),
            "ADD",
            {
                "socket": "/tmp/s.sock",
                "domain": "corp.test",
                "rewrite_resolv_conf": False,
                "resolv_conf": "/x/resolv.conf",
            },
        ),
        (
            conf(
                capabilities={"aliases": True},
                runtimeConfig={"aliases": {"rt5net": ["www", "api"], "x": ["y"]}},
            ),
            "ADD",
            {"aliases": ("www", "api")},
        ),
        (conf(runtimeConfig={"portMappings": []}), "ADD", {"aliases": ()}),
        ({**conf(cniVersion="0.4.0"), "prevResult": PREV_0_4}, "ADD", {"version": "0.4.0"}),
        ({"cniVersion": "1.0.0", "name": "rt5net", "type": "resolver-cni"}, "DEL", {"prev_result": None}),
        (conf(sokcet="/x", socket="/s"), "DEL", {"socket": "/s"}),  # DEL cleans up after a bad config
        (conf(socket=5, rewriteResolvConf="no"), "DEL", {"socket": cni.DEFAULT_SOCKET}),
        (conf(ipMasq=True, dns={}, args={"cni": {}}, ipam={}), "CHECK", {"network": "rt5net"}),
    ],
)
def test_config(doc: dict[str, Any], command: str, expected: dict[str, Any]) -> None:
    parsed = cni.parse_config(doc, command)
    assert {key: getattr(parsed, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("doc", "command", "code", "message"),
    [
        (conf(cniVersion="0.3.1"), "ADD", cni.INCOMPATIBLE_VERSION, "cniVersion '0.3.1' is not supported"),
        ({k: v for k, v in conf().items() if k != "cniVersion"}, "ADD", cni.INCOMPATIBLE_VERSION, "None"),
        (conf(name=""), "ADD", cni.INVALID_CONFIG, 'has no "name"'),
        (conf(sockett="/x"), "ADD", cni.UNSUPPORTED_FIELD, "unknown key 'sockett' = \"/x\""),
        (conf(socket=5), "ADD", cni.INVALID_CONFIG, "'socket' must be a string"),
        (
            conf(rewriteResolvConf="no"),
            "ADD",
            cni.INVALID_CONFIG,
            "'rewriteResolvConf' must be true or false",
        ),
        ({**conf(), "prevResult": None}, "ADD", cni.INVALID_CONFIG, "chained plugin and got no prevResult"),
        ({**conf(), "prevResult": None}, "CHECK", cni.INVALID_CONFIG, "got no prevResult"),
        ({**conf(), "prevResult": []}, "ADD", cni.INVALID_CONFIG, "prevResult must be a JSON object"),
        (conf(runtimeConfig={"aliases": ["a"]}), "ADD", cni.INVALID_CONFIG, "must map network names"),
        (
            conf(runtimeConfig={"aliases": {"rt5net": "a"}}),
            "ADD",
            cni.INVALID_CONFIG,
            "must be a list of names",
        ),
    ],
)
def test_config_errors(doc: dict[str, Any], command: str, code: int, message: str) -> None:
    with pytest.raises(CniError) as info:
        cni.parse_config(doc, command)
    assert info.value.code == code
    assert message in info.value.msg


@pytest.mark.parametrize(
    ("prev", "expected"),
    [
        (PREV_1_0, ["10.88.77.2/24", "fd00:77::2/64"]),
        (PREV_0_4, ["10.89.60.2/24"]),
        ({"ips": [{"address": "10.0.0.5/16"}]}, ["10.0.0.5/16"]),  # no interface index: the container's
        (  # an address on the host-side bridge is not the container's
            {
                "interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": NETNS}],
                "ips": [
                    {"address": "10.0.0.1/24", "interface": 0},
                    {"address": "10.0.0.9/24", "interface": 1},
                ],
            },
            ["10.0.0.9/24"],
        ),
        ({"interfaces": [], "ips": []}, []),
        ({}, []),
    ],
)
def test_result_addresses(prev: dict[str, Any], expected: list[str]) -> None:
    assert cni.result_addresses(prev) == expected


@pytest.mark.parametrize(
    ("prev", "message"),
    [
        ({"ips": {"address": "10.0.0.1"}}, "must be lists"),
        ({"ips": [{"interface": 0}]}, 'ips[0] has no "address"'),
        (
            {"interfaces": [{}], "ips": [{"address": "10.0.0.1/8", "interface": 3}]},
            "interface 3 is not an index",
        ),
        ({"interfaces": [{}], "ips": [{"address": "10.0.0.1/8", "interface": True}]}, "is not an index"),
    ],
)
def test_result_address_errors(prev: dict[str, Any], message: str) -> None:
    with pytest.raises(CniError) as info:
        cni.result_addresses(prev)
    assert info.value.code == cni.INVALID_CONFIG
    assert message in info.value.msg


@pytest.mark.parametrize(
    ("cni_args", "doc", "expected"),
    [
        (
            "IgnoreUnknown=1;K8S_POD_NAME=web1",
            conf(runtimeConfig={"aliases": {"rt5net": ["www", "web1"]}}),
            {"name": "web1", "aliases": ["www"], "ipv4": ["10.88.77.2"], "ipv6": ["fd00:77::2"]},
        ),
        ("", conf(), {"name": "c0ffee012345", "aliases": []}),  # no K8S_POD_NAME: the short id
        (
            "K8S_POD_NAME=db",
            conf(rewriteResolvConf=False),
            {
                "endpoint": "c0ffee0123456789",
                "netns": NETNS,
                "network": "rt5net",
                "rewrite_resolv_conf": False,
            },
        ),
        (
            "K8S_POD_NAME=db",
            conf(resolvConf="/r.conf"),
            {"resolv_conf": "/r.conf", "rewrite_resolv_conf": True},
        ),
    ],
)
def test_registration_body(cni_args: str, doc: dict[str, Any], expected: dict[str, Any]) -> None:
    env = cni.parse_env({**ENV, "CNI_ARGS": cni_args})
    body = cni.registration(env, cni.parse_config(doc, "ADD")).body()
    assert {key: body.get(key) for key in expected} == expected


@pytest.mark.parametrize(
    ("prev", "message"),
    [
        ({"interfaces": [{"name": "br"}], "ips": [{"address": "10.0.0.1/24", "interface": 0}]}, "no address"),
        ({"ips": [{"address": "not-an-ip"}]}, "'not-an-ip' is not an IP address"),
    ],
)
def test_registration_errors(prev: dict[str, Any], message: str) -> None:
    with pytest.raises(CniError) as info:
        cni.registration(cni.parse_env(ENV), cni.parse_config({**conf(), "prevResult": prev}, "ADD"))
    assert info.value.code == cni.INVALID_CONFIG
    assert message in info.value.msg


@pytest.mark.parametrize(
    ("registered", "problem"),
    [
        ({"ipv4": ["10.88.77.2"], "ipv6": ["fd00:77::2"], "netns": NETNS}, None),
        ({"ipv4": ["10.88.77.3"], "ipv6": ["fd00:77::2"], "netns": NETNS}, "IPv4 ['10.88.77.3'] instead of"),
        ({"ipv4": ["10.88.77.2"], "ipv6": [], "netns": NETNS}, "IPv6 [] instead of ['fd00:77::2']"),
        ({"ipv4": ["10.88.77.2"], "ipv6": ["fd00:77::2"], "netns": "/run/netns/o"}, "netns '/run/netns/o'"),
    ],
)
def test_check_compares_addresses_and_netns(registered: dict[str, Any], problem: str | None) -> None:
    reg = cni.registration(cni.parse_env(ENV), cni.parse_config(conf(), "CHECK"))
    if problem is None:
        cni.check_matches(registered, reg)
        return
    with pytest.raises(CniError) as info:
        cni.check_matches(registered, reg)
    assert info.value.code == cni.CHECK_FAILED
    assert problem in info.value.msg


@pytest.mark.parametrize(
    ("doc", "version"),
    [({"cniVersion": "0.4.0"}, "0.4.0"), ({"cniVersion": "1.0.0"}, "1.0.0"), ({}, "1.0.0")],
)
def test_version(doc: dict[str, Any], version: str) -> None:
    result = cni.execute({"CNI_COMMAND": "VERSION"}, json.dumps(doc).encode())
    assert result == {"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0"]}


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"{", cni.DECODING_FAILURE), (b"[1]", cni.DECODING_FAILURE), (b"\xff", cni.DECODING_FAILURE)],
)
def test_undecodable_config(raw: bytes, code: int) -> None:
    with pytest.raises(CniError) as info:
        cni.execute(ENV, raw)
    assert info.value.code == code


def test_error_document_has_the_spec_fields() -> None:
    doc = CniError(cni.INVALID_CONFIG, "bad", "more").document("0.4.0")
    assert doc == {"cniVersion": "0.4.0", "code": 7, "msg": "bad", "details": "more"}
    assert "details" not in CniError(1, "x").document("1.0.0")
