"""Key groups: the unit in which keyed work and keyed state are distributed.

The formulas, as in Flink's ``KeyGroupRangeAssignment``::

    key_group = crc32(key_bytes) % max_key_groups
    slot      = key_group * slots // max_key_groups

``crc32`` (zlib, C speed) is used rather than Python's ``hash()`` because the
latter is salted per process: a key must land in the same key group in every
worker process, before and after a restart. ``max_key_groups`` bounds the
parallelism a key space can ever be spread over (Flink's max parallelism);
slots own contiguous key-group ranges, so a key group's state can be moved or
scanned as one range. Every caller goes through this module.
"""

from __future__ import annotations

from zlib import crc32

DEFAULT_MAX_KEY_GROUPS = 128


def key_group(key_bytes: bytes, max_key_groups: int = DEFAULT_MAX_KEY_GROUPS) -> int:
    """The key group of a serialized key."""
    return crc32(key_bytes) % max_key_groups


def slot_of_key_group(group: int, slots: int, max_key_groups: int = DEFAULT_MAX_KEY_GROUPS) -> int:
    """The slot (of ``slots``) that owns ``group``."""
    return group * slots // max_key_groups


def key_group_range(slot: int, slots: int, max_key_groups: int = DEFAULT_MAX_KEY_GROUPS) -> range:
    """The contiguous key groups owned by ``slot``: the inverse of `slot_of_key_group`."""
    start = (slot * max_key_groups + slots - 1) // slots
    end = ((slot + 1) * max_key_groups + slots - 1) // slots
    return range(start, end)


def slot_table(slots: int, max_key_groups: int = DEFAULT_MAX_KEY_GROUPS) -> list[int]:
    """``table[key_group] == slot``, precomputed so routing is one list lookup per key."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    if max_key_groups < slots:
        raise ValueError(f"max_key_groups ({max_key_groups}) must be >= slots ({slots})")
    return [slot_of_key_group(g, slots, max_key_groups) for g in range(max_key_groups)]
