"""A join may ask the daemon to serve a sandbox but leave its resolv.conf alone (`rewrite_resolv_conf`
false, what `resolver-cni` sends for `rewriteResolvConf: false`); the choice is kept in the saved sandbox
record so that a restarted daemon does not rewrite the file either.
"""

from __future__ import annotations

from typing import Any

import pytest

from resolver.control import schema
from resolver.registry.errors import InvalidValue
from resolver.store import SandboxRecord

BODY = {"network": "n", "netns": "x", "endpoint": "e", "name": "web"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({}, True), ({"rewrite_resolv_conf": True}, True), ({"rewrite_resolv_conf": False}, False)],
)
def test_join_body_flag(extra: dict[str, Any], expected: bool) -> None:
    assert schema.join({**BODY, **extra}).rewrite_resolv_conf is expected


@pytest.mark.parametrize("value", ["no", 0, None])
def test_join_body_flag_must_be_a_boolean(value: object) -> None:
    with pytest.raises(InvalidValue, match="'rewrite_resolv_conf' must be true or false"):
        schema.join({**BODY, "rewrite_resolv_conf": value})


@pytest.mark.parametrize(
    ("record", "keep"),
    [
        (SandboxRecord((1, 2), None, None, keep_resolv_conf=True), True),
        (SandboxRecord((1, 2), None, "/r.conf"), False),
    ],
)
def test_sandbox_record_keeps_the_flag(record: SandboxRecord, keep: bool) -> None:
    again = SandboxRecord.from_dict(record.to_dict())
    assert again == record and again.keep_resolv_conf is keep


def test_record_saved_before_the_flag_existed_is_rewritten() -> None:
    assert (
        SandboxRecord.from_dict({"identity": [1, 2], "rewrite": None, "resolv_conf": None}).keep_resolv_conf
        is False
    )
