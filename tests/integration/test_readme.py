"""The README's "A first session" works when copied: every command of the block runs (with the test's
socket and unique namespace names instead of app1/app2), exits 0 and prints what its comment says.

`./scripts/serve &` is replaced by the `daemon` fixture (same daemon, the test's socket path); `R=...`
assignments are carried to the following commands; a comment after a command is its expected output
(a parenthesised remark and a trailing `...` are not part of it; whitespace is not significant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from .nstools import LISTEN, NETNS_ETC, REPO, DaemonFactory, Namespaces, clean_env, require, run

pytestmark = pytest.mark.netns

SESSION = re.compile(r"^## A first session\n.*?^```sh\n(.*?)^```", re.M | re.S)
COMMENT = re.compile(r"^(.*?)\s{2,}#\s?(.*)$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S+$")


@dataclass
class Step:
    command: str
    expected: str | None


def readme_session() -> list[Step]:
    match = SESSION.search((REPO / "README.md").read_text())
    assert match, "README.md has no '## A first session' block of sh"
    steps = []
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        comment = COMMENT.match(line)
        if comment is None:
            steps.append(Step(line.strip(), None))
            continue
        expected = re.sub(r"\([^)]*\)", "", comment.group(2)).strip().removesuffix("...").strip()
        steps.append(Step(comment.group(1).strip(), expected or None))
    return steps


def _normal(text: str) -> str:
    return " ".join(text.split())


def test_readme_first_session(daemon: DaemonFactory, netns: Namespaces) -> None:
    require("getent")
    steps = readme_session()
    assert steps[0].command == "./scripts/serve &", "the session starts the daemon with ./scripts/serve"
    d = daemon()
    names = {"app1": netns.adopt(netns.unique_name()), "app2": netns.adopt(netns.unique_name())}
    env = clean_env(RESOLVER_SOCKET=str(d.socket))
    prelude: list[str] = []
    checked = 0
    for step in steps[1:]:
        command = re.sub(r"\b(app1|app2)\b", lambda m: names[m.group(1)], step.command)
        if ASSIGNMENT.match(command):
            prelude.append(command)
            continue
        result = run(["bash", "-euo", "pipefail", "-c", "; ".join([*prelude, command])], env=env, timeout=60)
        print(f"$ {command}\n{result.stdout}{result.stderr}")  # shown when the test fails
        assert result.returncode == 0, f"`{command}` exited {result.returncode}: {result.stderr}"
        if step.expected is not None:
            checked += 1
            assert _normal(result.stdout).startswith(_normal(step.expected)), (
                f"`{command}` printed {result.stdout!r}, the README says {step.expected!r}"
            )
        if "dig +short db" in command:  # "(resolv.conf now says nameserver 127.0.0.11)"
            resolv_conf = (NETNS_ETC / names["app1"] / "resolv.conf").read_text().splitlines()
            assert [line for line in resolv_conf if line.startswith("nameserver")] == [f"nameserver {LISTEN}"]
    assert checked >= 4, f"only {checked} commands of the README session have an expected output"
    assert d.json("ls") == [], "after the session's leaves no sandbox is left"
    assert [n["name"] for n in d.json("network", "ls")] == ["backend"]
    for name in names.values():
        assert not (NETNS_ETC / name).exists(), f"/etc/netns/{name} left behind after leave"
