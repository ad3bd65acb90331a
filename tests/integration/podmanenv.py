"""A contained podman for the runtime tests: Debian's podman with runc, cgroupfs, file events and the
ulimits this machine allows, everything under one temporary directory.

`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF` and `CONTAINERS_REGISTRIES_CONF` point into that directory
(graphroot, runroot, tmp, hooks.d, CNI configuration and IPAM store); the network backend is CNI with a
conflist of our own (`bridge` + `host-local`, no masquerade, so no iptables rule is made), each container
gets a cgroup parent of its own. The image is busybox-static plus glibc's `getent` and the libraries it
needs, imported from a tarball (no registry). `cleanup` removes containers, image, storage mounts, the
bridge, the cgroups and the CNI result cache entries this instance made.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

CNI_DIR = Path("/usr/lib/cni")
CNI_CACHE = Path("/var/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
IMAGE = "localhost/rt5bbox:latest"
SHIPPED_HOOK = Path(__file__).resolve().parents[2] / "conf" / "oci-hooks.d" / "resolver.json"
GETENT_FILES = (
    "/usr/bin/getent",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/libnss_dns.so.2",
    "/lib/x86_64-linux-gnu/libnss_files.so.2",
)


def missing() -> list[str]:
    """What this machine lacks for the podman tests."""
    lacking = [] if os.geteuid() == 0 else ["root"]
    lacking += [t for t in ("podman", "runc", "conmon", "busybox") if shutil.which(t) is None]
    lacking += [str(CNI_DIR / p) for p in ("bridge", "host-local") if not (CNI_DIR / p).exists()]
    lacking += [f for f in GETENT_FILES if not os.path.exists(f)]
    return lacking


def build_rootfs(root: Path) -> None:
    """busybox with every applet linked, glibc getent with its loader and NSS, and a minimal /etc."""
    busybox = shutil.which("busybox")
    assert busybox is not None
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for name in GETENT_FILES:
        target = root / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(name), target)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "nsswitch.conf").write_text("hosts: files dns\n")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for d in ("proc", "sys", "dev", "tmp", "run"):
        (root / d).mkdir(exist_ok=True)


class Podman:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # short: conmon's attach socket path lives below the runroot and must fit in sun_path
        self.root = Path(tempfile.mkdtemp(prefix=f"{prefix}pm", dir="/tmp"))
        self.cgroup_parent = f"/{prefix}pm{secrets.token_hex(4)}"
        self.networks: list[tuple[str, str]] = []  # (name, bridge)
        self.containers: list[str] = []
        self.image_imported = False
        for d in ("graph", "run", "tmp", "hooks.d", "cni", "cni-bin", "ipam", "libpod", "volumes"):
            (self.root / d).mkdir()
        (self.root / "containers.conf").write_text(
            f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{self.root}/events.log"
tmp_dir = "{self.root}/tmp"
static_dir = "{self.root}/libpod"
volume_path = "{self.root}/volumes"
hooks_dir = ["{self.root}/hooks.d"]
[network]
network_backend = "cni"
network_config_dir = "{self.root}/cni"
cni_plugin_dirs = ["{CNI_DIR}", "{self.root}/cni-bin"]
default_network = "{prefix}unused"
"""
        )
        (self.root / "storage.conf").write_text(
            f"""[storage]
driver = "overlay"
graphroot = "{self.root}/graph"
runroot = "{self.root}/run"
"""
        )
        (self.root / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.hook_file = self.root / "hooks.d" / "resolver.json"

    def write_hook(self, hook_path: Path, hook_args: list[str]) -> None:
        """The hooks.d file shipped in conf/, with the hook's path and arguments of this test."""
        shipped = json.loads(SHIPPED_HOOK.read_text())
        shipped["hook"]["path"] = str(hook_path)
        shipped["hook"]["args"] = ["resolver-oci-hook", *hook_args]
        self.hook_file.write_text(json.dumps(shipped))

    def add_cni_plugin(self, binary: Path) -> None:
        """Make `binary` a CNI plugin podman finds (by its file name)."""
        link = self.root / "cni-bin" / binary.name
        if not link.exists():
            link.symlink_to(binary)

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
            "TMPDIR": str(self.root / "tmp"),
        }

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def import_image(self) -> None:
        rootfs = self.root / "rootfs"
        build_rootfs(rootfs)
        tarball = self.root / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            tar.add(rootfs, arcname=".")
        self("import", str(tarball), IMAGE)
        self.image_imported = True
        shutil.rmtree(rootfs)

    def network(self, name: str, subnet: str, extra_plugins: list[dict[str, Any]] | None = None) -> str:
        """A CNI network of our own (podman reads `<network_config_dir>/<name>.conflist`)."""
        bridge = f"{self.prefix}pb{secrets.token_hex(3)}"
        conflist = {
            "cniVersion": "0.4.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.root / "ipam"),
                    },
                },
                *(extra_plugins or []),
            ],
        }
        (self.root / "cni" / f"{name}.conflist").write_text(json.dumps(conflist))
        self.networks.append((name, bridge))
        return name

    def run(self, name: str, *options: str, command: tuple[str, ...] = ("sleep", "600")) -> str:
        self.containers.append(name)
        self("run", "-d", "--name", name, "--cgroup-parent", self.cgroup_parent, *options, IMAGE, *command)
        return name

    def exec(self, container: str, *cmd: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self("exec", container, *cmd, check=False, timeout=timeout)

    def inspect(self, container: str) -> dict[str, Any]:
        doc: list[dict[str, Any]] = json.loads(self("inspect", container).stdout)
        return doc[0]

    def remove_containers(self) -> None:
        """Remove the containers and networks made so far (the image and storage stay)."""
        for container in self.containers:
            self("rm", "-f", "-t", "0", container, check=False)
        self.containers.clear()
        for name, bridge in self.networks:
            (self.root / "cni" / f"{name}.conflist").unlink(missing_ok=True)
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
            for cached in (CNI_CACHE / "results").glob(f"{name}-*"):
                cached.unlink(missing_ok=True)
        self.networks.clear()
        for directory in (CNI_CACHE / "results", CNI_CACHE):  # made by libcni; left alone if in use
            with contextlib.suppress(OSError):
                directory.rmdir()

    def cleanup(self) -> None:
        self.remove_containers()
        if self.image_imported:
            self("rmi", "-f", IMAGE, check=False)
        with contextlib.suppress(subprocess.SubprocessError):
            self("system", "prune", "-a", "-f", check=False)
        self._unmount_below(self.root)
        for controller in CGROUP_ROOT.iterdir():
            group = controller / self.cgroup_parent.lstrip("/")
            if group.is_dir():
                for child in sorted(group.rglob("*"), reverse=True):
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    group.rmdir()
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _unmount_below(root: Path) -> None:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for point in sorted((p for p in points if p.startswith(f"{root}/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
