"""How keyed state is laid out in RocksDB and in changelog records.

A state key is ``partition (2 B) | key group (2 B) | len(key) (4 B) | key [| sub-key]``,
all big-endian, so that

* one input partition's state is one contiguous range (restore, drop, wipe),
* within it, one key group's state is one contiguous range (scan by key group),
* a key's map-state entries share the prefix ``partition | group | len | key``.

An entry that belongs to a whole partition rather than to a key (the watermark
the partition reached) has the key ``partition (2 B)`` alone (`partition_key`):
it lies in the partition's range, so it is restored, moved and dropped with it.

A changelog record carries one state write of one operator: its key is
``len(state name) (1 B) | state name | state key`` and its value the serialized
value, or a tombstone (``None``) for a delete, so the topic can be compacted.
"""

from __future__ import annotations

import struct

from weir.state.keygroups import key_group

_HEAD = struct.Struct(">HHI")
PREFIX_LEN = _HEAD.size  # partition, key group, key length


def state_key(partition: int, key: bytes, max_key_groups: int) -> bytes:
    """The storage key of ``key``'s state in ``partition``."""
    return _HEAD.pack(partition, key_group(key, max_key_groups), len(key)) + key


def partition_key(partition: int) -> bytes:
    """The storage key of ``partition``'s own entry (not any key's)."""
    return partition.to_bytes(2, "big")


def partition_of(skey: bytes) -> int:
    """The input partition of a storage key (a key's or the partition's own)."""
    return (skey[0] << 8) | skey[1]


def key_group_of(skey: bytes) -> int:
    """The key group of a key's storage key."""
    return (skey[2] << 8) | skey[3]


def key_of(skey: bytes) -> bytes:
    """The user key bytes inside a storage key (without any sub-key)."""
    (length,) = struct.unpack_from(">I", skey, 4)
    return skey[PREFIX_LEN : PREFIX_LEN + length]


def partition_range(partition: int) -> tuple[bytes, bytes]:
    """``[start, end)`` of every storage key of ``partition``."""
    return partition_key(partition), partition_key(partition + 1)


def changelog_key(state: str, skey: bytes) -> bytes:
    name = state.encode()
    return bytes([len(name)]) + name + skey


def split_changelog_key(data: bytes) -> tuple[str, bytes]:
    """Inverse of `changelog_key`: the state name and the storage key."""
    n = data[0]
    return data[1 : 1 + n].decode(), data[1 + n :]
