"""The files shipped in conf/ work with the code they configure: the example conflist parses in the CNI
plugin (with the `aliases` capability declared), the hooks.d file selects exactly the annotated
containers at the two stages the hook handles, the systemd unit starts `resolver serve` with options it
has and paths that match conf/resolver.toml (whose values test_config.py checks).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from resolver.adapters import cni, oci_hook

CONF = Path(__file__).resolve().parent.parent / "conf"
VENV_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def test_example_conflist_feeds_the_plugin() -> None:
    conflist = json.loads((CONF / "cni" / "resolver.conflist").read_text())
    (ours,) = [p for p in conflist["plugins"] if p["type"] == "resolver-cni"]
    assert conflist["plugins"][-1] is ours, "resolver-cni must come after the plugins that assign addresses"
    assert ours["capabilities"] == {"aliases": True}
    prev = {
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.89.10.2/24", "interface": 0}],
    }
    runtime = {"aliases": {"appnet": ["www"]}}
    doc = {
        "cniVersion": conflist["cniVersion"],
        "name": conflist["name"],
        **ours,
        "prevResult": prev,
        "runtimeConfig": runtime,
    }
    parsed = cni.parse_config(doc, "ADD")
    settings = tomllib.loads((CONF / "resolver.toml").read_text())
    assert parsed.socket == settings["server"]["socket"]
    assert (parsed.network, parsed.aliases, parsed.domain) == ("appnet", ("www",), "appnet.internal")


def test_hooks_d_file_selects_annotated_containers_at_both_stages() -> None:
    hook = json.loads((CONF / "oci-hooks.d" / "resolver.json").read_text())
    assert hook["version"] == "1.0.0"
    assert set(hook["stages"]) == {"createRuntime", "poststop"}
    assert Path(hook["hook"]["path"]).name == "resolver-oci-hook"
    assert oci_hook.parse_args(hook["hook"]["args"][1:]).socket == "/run/resolver/resolver.sock"
    ((key_pattern, value_pattern),) = hook["when"]["annotations"].items()
    selected = {
        key: bool(re.search(key_pattern, key) and re.search(value_pattern, value))
        for key, value in {
            oci_hook.ANNOTATION_NETWORKS: "appnet",
            "io.resolver.name": "web",
            "other": "x",
        }.items()
    }
    assert selected == {oci_hook.ANNOTATION_NETWORKS: True, "io.resolver.name": False, "other": False}
    assert not re.search(value_pattern, "")  # an empty annotation does not trigger the hook


def test_systemd_unit_runs_serve_with_options_it_has() -> None:
    unit = (CONF / "systemd" / "resolver.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    command = shlex.split(exec_start)
    assert Path(command[0]).name == "resolver" and command[1] == "serve"
    if not (VENV_BIN / "resolver").exists():
        pytest.skip("needs the installed `resolver` command")
    helped = subprocess.run(
        [VENV_BIN / "resolver", "serve", "--help"], capture_output=True, text=True, check=True
    )
    for option in (a for a in command[2:] if a.startswith("--")):
        assert option in helped.stdout
    settings = tomllib.loads((CONF / "resolver.toml").read_text())
    assert "RuntimeDirectory=resolver" in unit and settings["server"]["socket"].startswith("/run/resolver/")
    assert "StateDirectory=resolver" in unit and settings["server"]["state_dir"] == "/var/lib/resolver"
