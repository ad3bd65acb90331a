"""A CNI runtime for the tests: runs a conflist's plugins the way libcni does (Debian ships no `cnitool`).

Per plugin, stdin is `{cniVersion, name}` + the plugin's own configuration + `prevResult` (the previous
plugin's result on ADD; the cached result of the ADD on CHECK and DEL) + `runtimeConfig` holding only the
capabilities the plugin declares. The environment is CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
CNI_ARGS (`IgnoreUnknown=1;K8S_POD_NAME=...`) and CNI_PATH; the binary is `type` looked up on CNI_PATH. ADD
runs the plugins in order and caches the final result only on success; DEL runs them in reverse order and
drops the cache; CHECK runs them in order. A plugin that exits non-zero raises `PluginFailed` with its CNI
error document.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PluginFailed(Exception):
    def __init__(self, plugin: str, command: str, rc: int, error: dict[str, Any], stderr: str) -> None:
        super().__init__(f"{plugin} {command} exited {rc}: {error} {stderr.strip()}")
        self.plugin = plugin
        self.rc = rc
        self.error = error
        self.code = error.get("code")
        self.msg = str(error.get("msg", ""))


@dataclass
class Invocation:
    """What one plugin run took: for the benchmarks."""

    plugin: str
    command: str
    seconds: float


class Chain:
    def __init__(self, conflist: Mapping[str, Any], cni_path: Sequence[str | Path], cache_dir: Path) -> None:
        self.conflist = conflist
        self.cni_path = [str(p) for p in cni_path]
        self.cache_dir = cache_dir
        self.timings: list[Invocation] = []

    @property
    def plugins(self) -> list[dict[str, Any]]:
        return list(self.conflist["plugins"])

    def add(self, container_id: str, netns: str, name: str, **capabilities: Any) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in self.plugins:
            prev = self._invoke(plugin, "ADD", container_id, netns, name, prev, capabilities)
        assert prev is not None
        self._cache_path(container_id).write_text(
            json.dumps({"result": prev, "name": name, "caps": capabilities})
        )
        return prev

    def check(self, container_id: str, netns: str) -> None:
        cached = self._cached(container_id)
        for plugin in self.plugins:
            self._invoke(
                plugin, "CHECK", container_id, netns, cached["name"], cached["result"], cached["caps"]
            )

    def delete(self, container_id: str, netns: str, name: str = "") -> None:
        cached = self._cached(container_id) if self._cache_path(container_id).exists() else {}
        caps = cached.get("caps", {})
        for plugin in reversed(self.plugins):
            self._invoke(
                plugin, "DEL", container_id, netns, cached.get("name", name), cached.get("result"), caps
            )
        self._cache_path(container_id).unlink(missing_ok=True)

    def _cache_path(self, container_id: str) -> Path:
        return self.cache_dir / f"{self.conflist['name']}-{container_id}.json"

    def _cached(self, container_id: str) -> dict[str, Any]:
        cached: dict[str, Any] = json.loads(self._cache_path(container_id).read_text())
        return cached

    def netconf(
        self, plugin: Mapping[str, Any], prev: Any, capabilities: Mapping[str, Any]
    ) -> dict[str, Any]:
        conf = {"cniVersion": self.conflist["cniVersion"], "name": self.conflist["name"], **plugin}
        declared = {k: v for k, v in capabilities.items() if plugin.get("capabilities", {}).get(k)}
        if declared:
            conf["runtimeConfig"] = declared
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def env(self, command: str, container_id: str, netns: str, name: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}",
            "CNI_PATH": ":".join(self.cni_path),
        }

    def binary(self, plugin_type: str) -> str:
        for directory in self.cni_path:
            candidate = os.path.join(directory, plugin_type)
            if os.access(candidate, os.X_OK):
                return candidate
        raise FileNotFoundError(f"plugin {plugin_type!r} is not on CNI_PATH {self.cni_path}")

    def _invoke(
        self,
        plugin: Mapping[str, Any],
        command: str,
        container_id: str,
        netns: str,
        name: str,
        prev: Any,
        capabilities: Mapping[str, Any],
    ) -> Any:
        started = time.perf_counter()
        done = subprocess.run(
            [self.binary(plugin["type"])],
            input=json.dumps(self.netconf(plugin, prev, capabilities)),
            env=self.env(command, container_id, netns, name),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.timings.append(Invocation(plugin["type"], command, time.perf_counter() - started))
        if done.returncode != 0:
            try:
                error = json.loads(done.stdout)
            except ValueError:
                error = {"msg": done.stdout}
            raise PluginFailed(plugin["type"], command, done.returncode, error, done.stderr)
        if command != "ADD":
            return prev
        return json.loads(done.stdout)
