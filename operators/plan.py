"""The logical plan: the dataflow a job file describes, before it runs.

A job file builds a tree of `Node`s per source through the `Stream` API. The
runtime cuts that tree into *segments* at exchanges (a partitioner that moves
records between slots: ``key_by(fn)``, ``rebalance``, ``shuffle``,
``broadcast``); everything between two exchanges is chained inside one slot
thread with no queue in between, as in Flink's operator chaining.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Node kinds.
SOURCE = "source"
MAP = "map"
FILTER = "filter"
FLAT_MAP = "flat_map"
KEY_BY = "key_by"
PARTITION = "partition"
SINK = "sink"
REDUCE = "reduce"
AGGREGATE = "aggregate"
WINDOW = "window"
PROCESS = "process"
STATEFUL = frozenset({REDUCE, AGGREGATE, WINDOW, PROCESS})

# Partitioners (Flink's names). FORWARD and RESCALE keep records in their slot:
# every stage inside a worker runs with parallelism = slots, and with equal
# parallelism Flink's rescale is one-to-one.
FORWARD = "forward"
REBALANCE = "rebalance"
SHUFFLE = "shuffle"
RESCALE = "rescale"
BROADCAST = "broadcast"
HASH = "hash"
EXCHANGING = frozenset({REBALANCE, SHUFFLE, BROADCAST, HASH})


@dataclass(eq=False)
class Node:
    """One operator of the logical plan; ``children`` receive its output."""

    id: int
    kind: str
    name: str
    fn: Callable[..., Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    @property
    def exchanges(self) -> bool:
        """True when records leave their slot after this node (a segment boundary)."""
        if self.kind == PARTITION:
            return self.options["partitioner"] in EXCHANGING
        return self.kind == KEY_BY and self.fn is not None and "repartition" not in self.options

    def describe(self) -> str:
        extra = ""
        if self.kind == SOURCE or self.kind == SINK:
            extra = f" topic={self.options['topic']} value={self.options['value']}"
        elif self.kind == PARTITION:
            extra = f" {self.options['partitioner']}"
        elif self.kind == KEY_BY:
            if "repartition" in self.options:
                extra = f" -> repartition topic {self.options['repartition']}"
            else:
                extra = " (record key)" if self.fn is None else " (hash exchange)"
        elif self.kind == WINDOW:
            extra = f" {self.options['spec']!r} {self.options['function']}"
        return f"{self.name}: {self.kind}{extra}"


def walk(node: Node) -> list[Node]:
    """``node`` and everything downstream of it, depth first."""
    out = [node]
    for child in node.children:
        out.extend(walk(child))
    return out
