"""Storage keys of record keys, computed once per key per epoch.

A keyed operator turns each record's key into its storage key (`weir.state.layout.
state_key`: the key encoded, its key group, the partition). Keys repeat, so an
operator keeps the storage keys of one epoch per input partition and drops them at
each barrier (they never outnumber the epoch's writes). Only str, bytes and int keys
are kept: within those classes equal keys encode alike, while True == 1.0 == 1 encode
apart and lists cannot be dict keys. The lookup itself stays inline in the operators'
loops (a call per record would cost what the cache saves)::

    cls = k.__class__
    if cls is str or cls is bytes or cls is int:
        skey = skeys.get(k) or skeys.compute(k)   # skeys = cache.of(partition)
    else:
        skey = cache.key(partition, k)
"""

from __future__ import annotations

from typing import Any

from weir.operators.formats import encode_key
from weir.state.layout import state_key


class PartitionKeys(dict):
    """Storage keys of one partition's keys in this epoch: ``get(key)`` or ``compute(key)``."""

    __slots__ = ("groups", "partition")

    def __init__(self, partition: int, groups: int) -> None:
        super().__init__()
        self.partition = partition
        self.groups = groups

    def compute(self, key: Any) -> bytes:
        skey = self[key] = state_key(self.partition, encode_key(key), self.groups)
        return skey


class StorageKeys:
    """One operator's cache of storage keys, per partition, for the current epoch."""

    __slots__ = ("groups", "partitions")

    def __init__(self, max_key_groups: int) -> None:
        self.groups = max_key_groups
        self.partitions: dict[int, PartitionKeys] = {}

    def of(self, partition: int) -> PartitionKeys:
        keys = self.partitions.get(partition)
        if keys is None:
            keys = self.partitions[partition] = PartitionKeys(partition, self.groups)
        return keys

    def key(self, partition: int, key: Any) -> bytes:
        """The storage key of a key that is not cached (see the module)."""
        return state_key(partition, encode_key(key), self.groups)

    def clear(self) -> None:
        """A barrier passed: the next epoch starts without cached keys."""
        self.partitions = {}
