"""A slot's uncommitted state: the epoch buffer in front of RocksDB.

Writes of the current epoch (since the slot's last barrier) live in ``live`` as
Python objects, one dict per state, which operators read directly, and in
``encoded`` as the bytes their serde made of them. Operators store a value with
`put`, which encodes it at once:

1. A value that cannot be stored — its serde refuses it (JSON: an integer beyond
   64 bits, NaN or infinity, a type JSON does not have), or its changelog record
   would be larger than the changelog topic accepts — raises `UnstorableState` at
   the record that made it, and the key's state is put back as it was before that
   record (`revert`: operators may have changed the live value in place). The
   record fails alone; the checkpoint never sees the value.
2. At a barrier the slot `freeze`\\ s the epoch: the encoded bytes become the
   checkpoint's changelog records — encoded once, with nothing left to fail — and
   stay readable in ``frozen`` until the coordinator has committed the checkpoint
   and applied them to RocksDB (`applied`).

Reads go live → frozen → RocksDB. Only the owning slot thread reads and writes
``live`` and ``encoded``; the coordinator only swaps ``frozen`` out after applying
it, and a reader holding the old dict still sees the same values RocksDB now has.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from weir.state.exceptions import UnstorableState
from weir.state.layout import changelog_key, partition_of
from weir.state.serde import Serde
from weir.state.store import StateStore, Write

DELETED = object()
MISSING = object()


class EpochBuffer:
    """Uncommitted writes of one slot, layered over the worker's `StateStore`."""

    def __init__(
        self, store: StateStore, serdes: dict[str, Serde], limits: dict[str, int] | None = None
    ) -> None:
        """``limits``: per state, the most bytes (key and value) one of its changelog
        records may have; a state without one is not limited."""
        self.store = store
        self.serdes = serdes
        self._dumps = {state: serde.dumps for state, serde in serdes.items()}
        self._room: dict[str, list[int]] = {state: [0] for state in serdes}
        self.set_limits(limits or {})
        # One dict per state for the buffer's life (`freeze` empties them): writers and
        # operators may hold them.
        self.live: dict[str, dict[bytes, Any]] = {state: {} for state in serdes}
        self.encoded: dict[str, dict[bytes, bytes | None]] = {state: {} for state in serdes}
        self.frozen: dict[str, dict[bytes, bytes | None]] | None = None
        self._writers = {state: self._writer(state) for state in serdes}

    def set_limits(self, limits: dict[str, int]) -> None:
        """Per state, the most bytes (key and value) one of its changelog records may
        have — at start, and again when a changelog topic's limit changes (the slot
        reads the new dicts from its next write on)."""
        self.limits = {state: limits.get(state, sys.maxsize) for state in self.serdes}
        # what a value and its storage key may take of the record: the limit less the
        # changelog key's own prefix (the state name); one cell per state, which the
        # writers read, so a change reaches writers operators already hold
        for state, limit in self.limits.items():
            self._room[state][0] = limit - len(changelog_key(state, b""))

    def table(self, state: str) -> dict[bytes, Any]:
        """The live dict of ``state``, for reads on the hot path; write with `put`."""
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

    def writer(self, state: str) -> Callable[[bytes, Any], None]:
        """`put` for one state, bound once: the way hot paths write."""
        return self._writers[state]

    def put(self, state: str, skey: bytes, value: Any) -> None:
        """Store ``value`` for ``skey``, encoded now (step 1). Raises `UnstorableState`,
        with the key's state as it was before, if it cannot be stored."""
        self._writers[state](skey, value)

    def _writer(self, state: str) -> Callable[[bytes, Any], None]:
        live, encoded = self.live[state], self.encoded[state]
        dumps, room, revert = self._dumps[state], self._room[state], self.revert

        def put(skey: bytes, value: Any) -> None:
            try:
                data = dumps(value)
            except Exception as exc:  # a serde's refusal: any exception it raises
                revert(state, skey)
                raise UnstorableState(state, f"{type(exc).__name__}: {exc}") from None
            if len(data) + len(skey) > room[0]:
                revert(state, skey)
                raise self._too_large(state, len(data), len(skey))
            live[skey] = value
            encoded[skey] = data

        return put

    def _too_large(self, state: str, size: int, key_size: int) -> UnstorableState:
        limit = self.limits[state]
        record = size + key_size + limit - self._room[state][0]
        return UnstorableState(
            state,
            f"it is {size} bytes encoded, and its changelog record would be {record} bytes,"
            f" more than the {limit} its changelog accepts (the topic's max.message.bytes,"
            " at most the producer's message.max.bytes)",
        )

    def delete(self, state: str, skey: bytes) -> None:
        self.live[state][skey] = DELETED
        self.encoded[state][skey] = None

    def revert(self, state: str, skey: bytes) -> None:
        """Put ``skey``'s live value back to what was last stored: the bytes of its last
        `put` this epoch, or (untouched this epoch) the committed value."""
        encoded = self.encoded[state]
        if skey in encoded:
            data = encoded[skey]
            self.live[state][skey] = DELETED if data is None else self.serdes[state].loads(data)
        else:
            self.live[state].pop(skey, None)

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
        """End the epoch (step 2): its writes, as encoded by `put`, stay readable until
        applied."""
        frozen = {state: dict(table) for state, table in self.encoded.items()}
        self.frozen = frozen
        for state in self.serdes:
            self.live[state].clear()
            self.encoded[state].clear()
        return [
            (state, skey, data) for state, table in frozen.items() for skey, data in table.items()
        ]

    def applied(self) -> None:
        """The frozen writes are in RocksDB now."""
        self.frozen = None
