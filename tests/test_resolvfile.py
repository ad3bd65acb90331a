"""Tests of the in-place resolv.conf writer on real files under tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from resolver.nsinject.resolvfile import (
    MAX_SIZE,
    Rewrite,
    UnsafeFileError,
    plan_rewrite,
    resolv_conf_path_for,
    restore,
    rewrite,
    still_ours,
    write_plan,
)

HOST = "# from the host\nsearch corp.example\nnameserver 10.0.0.2\nnameserver 8.8.8.8\noptions edns0\n"
REWRITTEN = (
    "# Managed by the embedded DNS resolver; the original nameservers are listed below.\n"
    "# A hand-edited file is left alone and is not restored when the sandbox leaves.\n"
    "\n"
    "nameserver 127.0.0.11\n"
    "search corp.example\n"
    "options edns0 ndots:0\n"
    "\n"
    "# ExtServers: [10.0.0.2 8.8.8.8]\n"
    "# Option ndots from: internal\n"
)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text(HOST)
    return path


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


# --- path selection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("netns", "explicit", "expected"),
    [
        ("rtA", None, "/etc/netns/rtA/resolv.conf"),
        ("/run/netns/rtA", None, "/etc/netns/rtA/resolv.conf"),
        ("/var/run/netns/netns-1b2c", None, "/etc/netns/netns-1b2c/resolv.conf"),
        ("/proc/4242/ns/net", None, "/proc/4242/root/etc/resolv.conf"),
        (
            "/proc/4242/ns/net",
            "/run/containers/x/userdata/resolv.conf",
            "/run/containers/x/userdata/resolv.conf",
        ),
        ("rtA", "/srv/explicit.conf", "/srv/explicit.conf"),
    ],
)
def test_path_selection(netns: str, explicit: str | None, expected: str) -> None:
    assert resolv_conf_path_for(netns, explicit) == expected


@pytest.mark.parametrize("netns", ["", "..", "/var/run/docker/netns/abc", "/proc/1/ns/mnt", "a/b"])
def test_path_selection_refuses_unknown(netns: str) -> None:
    with pytest.raises(ValueError):
        resolv_conf_path_for(netns, None)


# --- rewrite ---------------------------------------------------------------------------------------


def test_rewrite_content_servers_and_record(conf: Path) -> None:
    rw, servers = rewrite(str(conf))
    assert conf.read_text() == REWRITTEN
    assert servers == ("10.0.0.2", "8.8.8.8")
    assert rw == Rewrite(
        path=str(conf),
        original_text=HOST,
        written_digest=hashlib.sha256(REWRITTEN.encode()).hexdigest(),
        created=False,
        created_dir=False,
    )
    assert still_ours(rw)


def test_rewrite_is_in_place(conf: Path, tmp_path: Path) -> None:
    link = tmp_path / "hardlink"
    os.link(conf, link)
    inode = os.stat(conf).st_ino
    with open(conf, "rb") as held:  # like a bind mount: an open reference to the inode
        rewrite(str(conf))
        assert os.stat(conf).st_ino == inode
        assert held.read() == REWRITTEN.encode()
    assert link.read_text() == REWRITTEN
    assert os.stat(link).st_nlink == 2


def test_rewrite_keeps_mode_of_existing_file(conf: Path) -> None:
    conf.chmod(0o600)
    rewrite(str(conf))
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600


def test_restore_writes_original_back_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    original = (
        b"; odd \xff bytes\r\nnameserver 10.0.0.2\r\n  indented garbage\nsearch a.example"  # no final \n
    )
    path.write_bytes(original)
    inode = os.stat(path).st_ino
    rw, servers = rewrite(str(path))
    assert servers == ("10.0.0.2",)
    assert restore(rw) == "restored"
    assert path.read_bytes() == original
    assert os.stat(path).st_ino == inode
    assert not still_ours(rw)


def test_user_edit_is_left_alone(conf: Path) -> None:
    rw, _ = rewrite(str(conf))
    edited = REWRITTEN + "nameserver 1.1.1.1\n"
    conf.write_text(edited)
    assert not still_ours(rw)
    assert restore(rw) == "user-modified"
    assert conf.read_text() == edited


def test_restore_missing(conf: Path) -> None:
    rw, _ = rewrite(str(conf))
    conf.unlink()
    assert restore(rw) == "missing"
    assert not still_ours(rw)


def test_missing_file_not_created_by_default(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        rewrite(str(tmp_path / "resolv.conf"), fallback_text=HOST)
    assert not (tmp_path / "resolv.conf").exists()


def test_created_file_and_dir_removed_on_restore(tmp_path: Path, umask_077: None) -> None:
    netns_dir = tmp_path / "etc" / "netns" / "rtA"  # neither it nor its parents exist yet
    path = netns_dir / "resolv.conf"
    rw, servers = rewrite(str(path), fallback_text=HOST, create=True)
    assert servers == ("10.0.0.2", "8.8.8.8")
    assert path.read_text() == REWRITTEN
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert (rw.original_text, rw.created, rw.created_dir) == (None, True, True)
    assert restore(rw) == "removed"
    assert not path.exists()
    assert not netns_dir.exists()
    assert (tmp_path / "etc" / "netns").is_dir()  # only the NAME directory is ours


def test_created_file_in_existing_dir_keeps_dir(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    rw, servers = rewrite(str(path), fallback_text=None, create=True)
    assert servers == ()
    assert (rw.created, rw.created_dir) == (True, False)
    assert restore(rw) == "removed"
    assert not path.exists()
    assert tmp_path.is_dir()


def test_created_dir_kept_when_not_empty(tmp_path: Path) -> None:
    netns_dir = tmp_path / "rtB"
    rw, _ = rewrite(str(netns_dir / "resolv.conf"), fallback_text=HOST, create=True)
    (netns_dir / "hosts").write_text("127.0.0.1 localhost\n")
    assert restore(rw) == "removed"
    assert (netns_dir / "hosts").exists()


def test_rewrite_again_keeps_original_servers(conf: Path) -> None:
    first, servers = rewrite(str(conf))
    second, again = rewrite(str(conf), previous=first)
    assert again == servers == ("10.0.0.2", "8.8.8.8")
    assert second == first  # same original, same bytes written
    assert conf.read_text() == REWRITTEN
    assert restore(second) == "restored"
    assert conf.read_text() == HOST


def test_rewrite_again_without_record_rebuilds_original(conf: Path) -> None:
    first, _ = rewrite(str(conf))
    second, servers = rewrite(str(conf))
    assert servers == ("10.0.0.2", "8.8.8.8")
    assert second.written_digest == first.written_digest
    assert second.original_text == (
        "nameserver 10.0.0.2\nnameserver 8.8.8.8\nsearch corp.example\noptions edns0\n"
    )
    assert restore(second) == "restored"
    assert conf.read_text() == second.original_text


def test_previous_record_for_created_file(tmp_path: Path) -> None:
    path = tmp_path / "rtC" / "resolv.conf"
    first, _ = rewrite(str(path), fallback_text=HOST, create=True)
    second, servers = rewrite(str(path), previous=first)
    assert servers == ("10.0.0.2", "8.8.8.8")
    assert second == first
    assert restore(second) == "removed"
    assert not path.parent.exists()


def test_record_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(b"nameserver 10.0.0.2\n# \xfe\n")
    rw, _ = rewrite(str(path))
    loaded = Rewrite.from_dict(json.loads(json.dumps(rw.to_dict())))
    assert loaded == rw
    assert restore(loaded) == "restored"
    assert path.read_bytes() == b"nameserver 10.0.0.2\n# \xfe\n"


@pytest.mark.parametrize(
    "change",
    [
        {"written_digest": "abc"},
        {"created": "yes"},
        {"original_text": None},  # not created, yet no original
        {"created_dir": True},  # a directory made for a file we did not create
        {"path": None},
    ],
)
def test_record_from_dict_rejects_bad_data(change: dict[str, object]) -> None:
    good = {
        "path": "/x",
        "original_text": "",
        "written_digest": "0" * 64,
        "created": False,
        "created_dir": False,
    }
    Rewrite.from_dict(good)
    with pytest.raises(ValueError):
        Rewrite.from_dict(good | change)


# --- refusing unsafe files -------------------------------------------------------------------------


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text(HOST)
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)
    with pytest.raises(OSError):
        rewrite(str(link))
    assert target.read_text() == HOST


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "resolv.conf"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError):
        rewrite(str(fifo))


def test_huge_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("#" * (MAX_SIZE + 1))
    with pytest.raises(UnsafeFileError):
        rewrite(str(path))
    assert path.read_text() == "#" * (MAX_SIZE + 1)


def test_proc_root_path_is_walked(tmp_path: Path) -> None:
    real = Path(os.path.realpath(tmp_path))
    (real / "etc").mkdir()
    (real / "etc" / "resolv.conf").write_text(HOST)
    rw, servers = rewrite(f"/proc/self/root{real}/etc/resolv.conf")
    assert servers == ("10.0.0.2", "8.8.8.8")
    assert (real / "etc" / "resolv.conf").read_text() == REWRITTEN
    assert restore(rw) == "restored"
    assert (real / "etc" / "resolv.conf").read_text() == HOST


def test_proc_root_refuses_symlinked_directory(tmp_path: Path) -> None:
    """A sandbox cannot point /etc elsewhere (an absolute link would reach the daemon's own files)."""
    real = Path(os.path.realpath(tmp_path))
    host_etc = real / "host-etc"
    host_etc.mkdir()
    (host_etc / "resolv.conf").write_text(HOST)
    (real / "etc").symlink_to(host_etc)
    with pytest.raises(OSError):
        rewrite(f"/proc/self/root{real}/etc/resolv.conf")
    assert (host_etc / "resolv.conf").read_text() == HOST


def test_proc_root_refuses_dotdot(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileError):
        rewrite("/proc/self/root/../etc/resolv.conf")


# --- plan, then write (the daemon saves the undo record in between) ----------------------------------


def test_a_plan_writes_nothing_until_carried_out(conf: Path) -> None:
    plan = plan_rewrite(str(conf))
    assert conf.read_text() == HOST
    assert (plan.record.original_text, plan.servers) == (HOST, ("10.0.0.2", "8.8.8.8"))
    write_plan(plan)
    assert conf.read_text() == REWRITTEN
    assert plan.record.written_digest == hashlib.sha256(REWRITTEN.encode()).hexdigest()
    assert restore(plan.record) == "restored" and conf.read_text() == HOST


@pytest.mark.parametrize("edited", [HOST + "nameserver 10.0.0.3\n", None])
def test_a_plan_is_not_carried_out_on_a_file_that_changed_since(conf: Path, edited: str | None) -> None:
    """`edited` is what the file holds when the plan is carried out (None: it was removed)."""
    plan = plan_rewrite(str(conf))
    if edited is None:
        conf.unlink()
    else:
        conf.write_text(edited)
    with pytest.raises(OSError):
        write_plan(plan)
    assert (conf.read_text() if conf.exists() else None) == edited


def test_a_planned_creation_fails_if_someone_created_the_file_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "resolv.conf"
    plan = plan_rewrite(str(path), fallback_text=HOST, create=True)
    assert (plan.record.created, plan.record.created_dir, path.parent.exists()) == (True, True, False)
    path.parent.mkdir()
    path.write_text("nameserver 10.9.9.9\n")
    with pytest.raises(FileExistsError):
        write_plan(plan)
    assert path.read_text() == "nameserver 10.9.9.9\n"
