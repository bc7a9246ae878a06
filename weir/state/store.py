"""The state store: one RocksDB per worker process, a column family per state.

Column families are named ``<operator>.<state>`` (those of states the job no longer
has are dropped on opening); one more, ``weir.meta``,
records per ``(operator, partition)`` the changelog offset up to which the local
database is complete, and the id of the last checkpoint applied. Every write
goes through `StateStore.apply` or `StateStore.restore`, each one RocksDB write
batch, so data and its offsets change together or not at all.

Opening takes an exclusive lock on ``<path>.lock`` first (``flock``, released by
the kernel when the process dies, so a crashed worker never leaves it behind).
A directory held by another live process — the same ``--worker-id`` and
``--state-dir`` started twice — is refused with `StateDirectoryLocked` naming the
directory and the holder's pid, and never touched. Only a database proven
corrupt (RocksDB reports corruption) or written in another format is discarded,
with a warning; the changelogs rebuild it. Any other failure to open is an error.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from rocksdict import Options, Rdict, WriteBatch

from weir.state.exceptions import StateDirectoryLocked, StateError
from weir.state.layout import partition_range

log = logging.getLogger(__name__)

META = "weir.meta"
FORMAT = b"weir-state-1"
_FORMAT_KEY = b"format"
_CHECKPOINT_KEY = b"checkpoint"
_U64 = struct.Struct(">Q")

Write = tuple[str, bytes, bytes | None]  # (state, storage key, value or None = delete)


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    return opts


class StateStore:
    """Keyed state of every stateful operator of one worker process."""

    def __init__(self, path: Path, states: Iterable[str]) -> None:
        self.path = Path(path)
        self.states = sorted(set(states))
        self._lock: IO[str] | None = _lock_directory(self.path)
        try:
            self._open()
        except _Unusable as exc:
            log.warning("discarding local state at %s (%s); rebuilding from changelogs", path, exc)
            self._discard()
            self._open()
        except Exception as exc:  # rocksdict raises plain Exceptions
            if "corruption" not in str(exc).lower():
                self._unlock()
                raise StateError(f"cannot open local state at {self.path}: {exc}") from None
            log.warning("discarding corrupt local state at %s (%s); rebuilding", path, exc)
            self._discard()
            self._open()

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        existing = set(Rdict.list_cf(str(self.path))) if (self.path / "CURRENT").exists() else set()
        families = {name: Options(raw_mode=True) for name in {*existing, *self.states, META}}
        families.pop("default", None)
        self.db = Rdict(str(self.path), options=_options(), column_families=families)
        self.meta = self.db.get_column_family(META)
        fmt = self.meta.get(_FORMAT_KEY)
        if fmt is None and not existing - {"default", META}:
            self.meta[_FORMAT_KEY] = FORMAT
        elif fmt != FORMAT:
            self._close_db()
            raise _Unusable(f"state format {fmt!r}, expected {FORMAT!r}")
        self._drop_unused(existing - {"default", META, *self.states})
        self.columns = {name: self.db.get_column_family(name) for name in self.states}
        self.handles = {name: self.db.get_column_family_handle(name) for name in self.states}
        self.meta_handle = self.db.get_column_family_handle(META)

    def _drop_unused(self, unused: set[str]) -> None:
        """Drop the column families of states no operator of the job has any more (a
        renamed or removed operator, whose changelog the worker's state check found
        gone or deleted), with their operators' changelog offsets: should an operator
        of that name come back, it restores from its changelog's start."""
        for name in sorted(unused):
            log.info("dropping local state %s: no operator of the job has it", name)
            self.db.drop_column_family(name)
            operator = name.rsplit(".", 1)[0].encode()
            for prefix in (b"offset/", b"changelog-id/"):
                start = prefix + operator + b"/"
                for key in list(self.meta.keys(from_key=start)):
                    if not key.startswith(start):
                        break
                    self.meta.delete(key)

    def _discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        self._close_db()
        self._unlock()

    def _close_db(self) -> None:
        self.columns = {}
        self.handles = {}
        self.meta = self.meta_handle = None
        self.db.close()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    # -- reads --------------------------------------------------------------
    def get(self, state: str, skey: bytes) -> bytes | None:
        return self.columns[state].get(skey)

    def changelog_offset(self, operator: str, partition: int) -> int | None:
        """Next changelog offset to read for this operator's partition, if recorded."""
        data = self.meta.get(_offset_key(operator, partition))
        return None if data is None else _U64.unpack(data)[0]

    def changelog_id(self, operator: str, partition: int) -> str | None:
        """The id of the changelog topic this partition's local state came from."""
        data = self.meta.get(_id_key(operator, partition))
        return None if data is None else data.decode()

    def last_checkpoint(self) -> int:
        data = self.meta.get(_CHECKPOINT_KEY)
        return 0 if data is None else _U64.unpack(data)[0]

    def size_bytes(self, state: str) -> int:
        """Estimated live bytes of a state (SST files plus memtables)."""
        column = self.columns[state]
        total = 0
        for prop in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"):
            value = column.property_int_value(prop)
            total += value or 0
        return total

    def items(self, state: str, partition: int) -> list[tuple[bytes, bytes]]:
        """Every entry of ``state`` in ``partition`` (for queries and tests)."""
        start, end = partition_range(partition)
        out = []
        for key, value in self.columns[state].items(from_key=start):
            if key >= end:
                break
            out.append((key, value))
        return out

    # -- writes ---------------------------------------------------------------
    def apply(
        self,
        writes: Iterable[Write],
        offsets: dict[tuple[str, int], int],
        checkpoint_id: int,
    ) -> None:
        """A committed checkpoint's writes, its changelog offsets and its id: one batch."""
        batch = self._batch(writes)
        for (operator, partition), offset in offsets.items():
            batch.put(_offset_key(operator, partition), _U64.pack(offset), self.meta_handle)
        batch.put(_CHECKPOINT_KEY, _U64.pack(checkpoint_id), self.meta_handle)
        self.db.write(batch)

    def restore(
        self,
        writes: Iterable[Write],
        operator: str,
        partition: int,
        offset: int,
        changelog_id: str | None = None,
    ) -> None:
        """Changelog records of one partition, and the offset after them: one batch
        (with the changelog topic's id, when a restore starts)."""
        batch = self._batch(writes)
        batch.put(_offset_key(operator, partition), _U64.pack(offset), self.meta_handle)
        if changelog_id is not None:
            batch.put(_id_key(operator, partition), changelog_id.encode(), self.meta_handle)
        self.db.write(batch)

    def _batch(self, writes: Iterable[Write]) -> WriteBatch:
        batch = WriteBatch(raw_mode=True)
        handles = self.handles
        for state, skey, value in writes:
            if value is None:
                batch.delete(skey, handles[state])
            else:
                batch.put(skey, value, handles[state])
        return batch

    def wipe(self, operator: str, states: Iterable[str], partition: int) -> None:
        """Drop a partition's local state and its offset (before a full restore)."""
        start, end = partition_range(partition)
        for state in states:
            self.columns[state].delete_range(start, end)
        self.meta.delete(_offset_key(operator, partition))
        self.meta.delete(_id_key(operator, partition))


class _Unusable(Exception):
    """The database opened but holds another format: rebuild it."""


def _lock_directory(path: Path) -> IO[str]:
    """Hold ``<path>.lock`` exclusively for this process's life; the file records the
    holder's pid, so a refusal can name it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 - held open
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StateDirectoryLocked(
            f"state directory {path} is in use by another live process (pid {holder});"
            " is a worker with the same --worker-id and --state-dir already running?"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _offset_key(operator: str, partition: int) -> bytes:
    return b"offset/" + operator.encode() + b"/" + str(partition).encode()


def _id_key(operator: str, partition: int) -> bytes:
    return b"changelog-id/" + operator.encode() + b"/" + str(partition).encode()
