"""The state store's safety rules, without a broker: a directory held by another live
process is refused and left untouched; only a database proven corrupt, or written in
another format, is rebuilt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from weir.state.exceptions import StateDirectoryLocked
from weir.state.store import StateStore

STATES = ["op.acc"]
OPEN_ELSEWHERE = """
import sys
from weir.state.store import StateStore
try:
    StateStore(sys.argv[1], ["op.acc"]).close()
    print("opened")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def _write_one(path: Path) -> None:
    store = StateStore(path, STATES)
    store.apply([("op.acc", b"\x00\x01key", b"1")], {("op", 1): 7}, checkpoint_id=3)
    store.close()


def _open_in_another_process(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_ELSEWHERE, str(path)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    return done.stdout.strip()


def test_directory_held_by_a_live_process_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "group" / "w1"
    _write_one(path)
    holder = StateStore(path, STATES)
    try:
        answer = _open_in_another_process(path)
        assert answer.startswith("StateDirectoryLocked"), answer
        assert str(path) in answer and "--worker-id" in answer
        with pytest.raises(StateDirectoryLocked):
            StateStore(path, STATES)  # a second open in this process is refused too
        assert holder.get("op.acc", b"\x00\x01key") == b"1"  # nothing was deleted
    finally:
        holder.close()
    assert _open_in_another_process(path) == "opened"  # released with its holder


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "w"
    _write_one(path)
    store = StateStore(path, STATES)
    assert store.get("op.acc", b"\x00\x01key") == b"1"
    assert store.changelog_offset("op", 1) == 7 and store.last_checkpoint() == 3
    store.close()


def test_corrupt_database_is_rebuilt_empty(tmp_path: Path) -> None:
    path = tmp_path / "w"
    _write_one(path)
    (path / "CURRENT").write_text("garbage")  # RocksDB reports this as corruption
    store = StateStore(path, STATES)
    assert store.get("op.acc", b"\x00\x01key") is None
    assert store.changelog_offset("op", 1) is None and store.last_checkpoint() == 0
    store.close()


def test_other_format_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "w"
    _write_one(path)
    store = StateStore(path, STATES)
    store.meta[b"format"] = b"weir-state-0"
    store.close()
    store = StateStore(path, STATES)
    assert store.get("op.acc", b"\x00\x01key") is None
    store.close()
