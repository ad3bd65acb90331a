"""The state store: snapshot plus journal, torn lines, compaction, and what a save writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resolver.registry import model as m
from resolver.registry.registry import Registry
from resolver.store import STATE_FILE, SandboxRecord, Store, encode

NETNS = [f"/run/netns/s{i}" for i in range(6)]


def _changes() -> list[m.Event]:
    events: list[m.Event] = [m.CreateNetwork("alpha", domain="corp.test"), m.CreateNetwork("beta")]
    events += [
        m.JoinEndpoint("alpha", NETNS[i], f"ep{i:02d}", f"host{i}", ipv4=(f"10.0.0.{i + 2}",))
        for i in range(6)
    ]
    events += [
        m.CreateService("alpha", "svc", ("10.0.9.1",), "vip"),
        m.JoinEndpoint("beta", NETNS[0], "ep00", "host0", aliases=("api",), ipv4=("10.1.0.2",)),
        m.SetSandboxUpstreams(NETNS[1], ("192.0.2.53",)),
        m.LeaveEndpoint("ep03", "alpha"),
        m.RemoveService("alpha", "svc"),
        m.RemoveSandbox(NETNS[4]),
    ]
    return events


def _run(
    store: Store, events: list[m.Event], targeted: bool = False
) -> tuple[Registry, dict[str, SandboxRecord]]:
    """Apply and save each event: comparing whole states, or (`targeted`) naming what changed, as the
    daemon does."""
    registry = Registry()
    records: dict[str, SandboxRecord] = {}
    for number, event in enumerate(events):
        change = registry.apply(event)
        for netns in change.added_sandboxes:
            records[netns] = SandboxRecord(identity=(1, number), resolv_conf=f"/tmp/{number}/resolv.conf")
        for sandbox in change.removed_sandboxes:
            records.pop(sandbox.netns, None)
        if targeted and number > 0:
            store.save(registry.state, records, dirty=change.added_sandboxes, touched=change.records)
        else:
            store.save(registry.state, records)
    return registry, records


def _doc(registry: Registry, records: dict[str, SandboxRecord]) -> dict:
    return encode(registry.state, records)


def _reloaded(directory: Path) -> dict:
    saved = Store(str(directory)).load()
    return _doc(saved.registry, saved.sandboxes)


def test_every_change_survives_a_reload(tmp_path: Path) -> None:
    registry, records = _run(Store(str(tmp_path)), _changes())
    assert _reloaded(tmp_path) == _doc(registry, records)
    assert (tmp_path / Store.JOURNAL_FILE).stat().st_size > 0, "changes after the first go to the journal"


def test_saving_only_the_named_records_gives_the_same_state(tmp_path: Path) -> None:
    registry, records = _run(Store(str(tmp_path)), _changes(), targeted=True)
    assert _reloaded(tmp_path) == _doc(registry, records)


def test_a_join_writes_only_what_it_changed(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    registry, records = _run(store, _changes())
    registry.apply(m.JoinEndpoint("alpha", "/run/netns/new", "fresh-one", "fresh", ipv4=("10.0.0.99",)))
    line = store.prepare(registry.state, records, dirty=())
    assert line is not None and line.startswith(b"j"), (
        "a join is not fsynced: namespaces die with the machine"
    )
    assert not Store.needs_sync(line)
    written = json.loads(line[1:])
    assert list(written["put"]) == ["endpoints", "sandboxes"]
    assert list(written["put"]["endpoints"]) == ["alpha/fresh-one"]
    assert list(written["put"]["sandboxes"]) == ["/run/netns/new"]
    assert store.prepare(registry.state, records, dirty=()) is None, "nothing changed since"
    registry.apply(m.CreateNetwork("gamma"))
    durable = store.prepare(registry.state, records, dirty=())
    assert durable is not None and durable.startswith(b"J") and Store.needs_sync(durable)


def test_compaction_folds_the_journal_into_the_snapshot(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.MIN_COMPACT_BYTES = 0
    registry, records = _run(store, _changes())
    assert (tmp_path / Store.JOURNAL_FILE).stat().st_size < (tmp_path / STATE_FILE).stat().st_size
    assert _reloaded(tmp_path) == _doc(registry, records)


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    registry, records = _run(Store(str(tmp_path)), _changes())
    with open(tmp_path / Store.JOURNAL_FILE, "ab") as journal:
        journal.write(b'{"seq": 999, "put": {"endpoints": {"alpha/x": {"netw')
    assert _reloaded(tmp_path) == _doc(registry, records)


def test_an_unreadable_middle_line_is_skipped_and_the_rest_applies(tmp_path: Path) -> None:
    registry, records = _run(Store(str(tmp_path)), _changes())
    journal = tmp_path / Store.JOURNAL_FILE
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([*lines, b"{garbage\n"]))
    with open(journal, "ab") as more:
        more.write(b'{"seq": 900, "del": {"endpoints": ["alpha/ep05"]}}\n')
    registry.apply(m.LeaveEndpoint("ep05", "alpha"))
    records.pop(NETNS[5])
    assert _reloaded(tmp_path) == _doc(registry, records)


def test_lines_the_snapshot_already_holds_are_not_replayed(tmp_path: Path) -> None:
    """A crash between writing a snapshot and emptying the journal leaves lines the snapshot holds."""
    store = Store(str(tmp_path))
    registry, records = _run(store, _changes())
    ghost = {"seq": 1, "put": {"endpoints": {"alpha/ghost": {"network": "alpha", "id": "ghost"}}}}
    snapshot = json.loads((tmp_path / STATE_FILE).read_text())
    snapshot.update(_doc(registry, records), journal_seq=10_000)
    (tmp_path / STATE_FILE).write_text(json.dumps(snapshot))
    with open(tmp_path / Store.JOURNAL_FILE, "a") as journal:
        journal.write(json.dumps(ghost) + "\n")
    assert _reloaded(tmp_path) == _doc(registry, records)


def test_a_snapshot_without_a_journal_loads(tmp_path: Path) -> None:
    """The layout of earlier versions: one state.json and no journal."""
    registry, records = _run(Store(str(tmp_path)), _changes())
    (tmp_path / STATE_FILE).write_text(json.dumps(_doc(registry, records)))
    (tmp_path / Store.JOURNAL_FILE).unlink()
    assert _reloaded(tmp_path) == _doc(registry, records)


@pytest.mark.parametrize("text", ['{"version": 99}', "[]", "not json"])
def test_an_unknown_snapshot_is_set_aside(tmp_path: Path, text: str) -> None:
    (tmp_path / STATE_FILE).write_text(text)
    saved = Store(str(tmp_path)).load()
    assert not saved.registry.state.networks
    assert (tmp_path / (STATE_FILE + ".broken")).exists()


def test_a_failed_write_is_followed_by_a_whole_snapshot(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    registry, records = _run(store, _changes()[:4])
    registry.apply(m.JoinEndpoint("beta", "/run/netns/late", "late", "late", ipv4=("10.1.0.9",)))
    line = store.prepare(registry.state, records, dirty=())
    (tmp_path / Store.JOURNAL_FILE).unlink()
    (tmp_path / Store.JOURNAL_FILE).mkdir()  # appending now fails
    with pytest.raises(OSError):
        store.write(line)
    (tmp_path / Store.JOURNAL_FILE).rmdir()
    assert (store.prepare(registry.state, records) or b"").startswith(b"S")
