"""A slot's uncommitted state: the epoch buffer in front of RocksDB.

Writes of the current epoch (since the slot's last barrier) live in ``live``
as Python objects, one dict per state, so a key updated many times in an epoch
is serialized once. At a barrier the slot `freeze`\\ s them: they are
serialized, become the changelog records of the checkpoint, and stay readable
in ``frozen`` until the coordinator has committed the checkpoint and applied
them to RocksDB (`applied`). Reads go live → frozen → RocksDB.

Only the owning slot thread reads and writes ``live``; the coordinator only
swaps ``frozen`` out after applying it, and a reader holding the old dict still
sees the same values RocksDB now has.
"""

from __future__ import annotations

from typing import Any

from weir.state.layout import partition_of
from weir.state.serde import Serde
from weir.state.store import StateStore, Write

DELETED = object()
MISSING = object()


class EpochBuffer:
    """Uncommitted writes of one slot, layered over the worker's `StateStore`."""

    def __init__(self, store: StateStore, serdes: dict[str, Serde]) -> None:
        self.store = store
        self.serdes = serdes
        self.live: dict[str, dict[bytes, Any]] = {state: {} for state in serdes}
        self.frozen: dict[str, dict[bytes, bytes | None]] | None = None

    def table(self, state: str) -> dict[bytes, Any]:
        """The live dict of ``state``: operators read and write it directly on the hot path."""
        return self.live[state]

    def committed(self, state: str, skey: bytes) -> Any:
        """The value as of the last barrier (frozen, else RocksDB); None if absent."""
        frozen = self.frozen
        if frozen is not None:
            data = frozen[state].get(skey, MISSING)
            if data is not MISSING:
                return None if data is None else self.serdes[state].loads(data)
        data = self.store.get(state, skey)
        return None if data is None else self.serdes[state].loads(data)

    def get(self, state: str, skey: bytes) -> Any:
        value = self.live[state].get(skey, MISSING)
        if value is MISSING:
            return self.committed(state, skey)
        return None if value is DELETED else value

    def delete(self, state: str, skey: bytes) -> None:
        self.live[state][skey] = DELETED

    def scan(self, state: str, partition: int) -> list[tuple[bytes, Any]]:
        """Every current entry of ``state`` in ``partition``: RocksDB, then frozen, then live."""
        loads = self.serdes[state].loads
        merged: dict[bytes, Any] = {k: v for k, v in self.store.items(state, partition)}
        if self.frozen is not None:
            for skey, data in self.frozen[state].items():
                if partition_of(skey) == partition:
                    merged[skey] = data
        out = {k: loads(v) for k, v in merged.items() if v is not None}
        for skey, value in self.live[state].items():
            if partition_of(skey) == partition:
                if value is DELETED:
                    out.pop(skey, None)
                else:
                    out[skey] = value
        return sorted(out.items())

    def freeze(self) -> list[Write]:
        """End the epoch: serialize its writes, keep them readable until applied."""
        writes: list[Write] = []
        frozen: dict[str, dict[bytes, bytes | None]] = {}
        for state, table in self.live.items():
            dumps = self.serdes[state].dumps
            out = frozen[state] = {}
            for skey, value in table.items():
                data = None if value is DELETED else dumps(value)
                out[skey] = data
                writes.append((state, skey, data))
        self.frozen = frozen
        self.live = {state: {} for state in self.serdes}
        return writes

    def applied(self) -> None:
        """The frozen writes are in RocksDB now."""
        self.frozen = None
