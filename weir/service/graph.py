"""The job graph the status page draws: a physical plan as Flink draws a job.

`JobGraph.of(plan)` cuts the plan into *tasks* where `weir.operators.build.build_chain`
cuts it into chains, so that what a slot counts per task (`weir.service.slots.SlotStats`)
names a box of the graph:

- a **task** is what one input of a slot runs without leaving the slot: the operators
  chained from a source topic (the job's, a repartition topic, or the topic of an
  operator with several inputs; keyed by the topic), from an exchange or from a union
  (keyed by the exchange's or the union's operator id). Forward and rescale
  partitioners move nothing and are not drawn;
- a **topic** node is a source topic, a sink topic or a late-record topic.

Edges carry records: ``source`` from a topic to the task reading it; an exchange
(``hash``, ``rebalance``, ``shuffle``, ``broadcast``) from a task to the task behind it;
``union`` from each input of a union to the union's task; ``repartition`` from the
task writing a repartition topic to the task reading it (labelled with the topic),
and ``side`` from each task writing one input of a multi-input operator (a join,
broadcast state) to the task reading that operator's topic (labelled with the topic
and the side); ``sink`` and ``late`` from a task to a topic.

Layout, so that a page draws it left to right without a layout engine: a node's
``column`` is the longest path to it from a source topic, its ``row`` its place in
that column in plan order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from weir.operators.physical import PhysicalPlan, PlanNode
from weir.operators.plan import (
    HashExchange,
    MergedSource,
    Partition,
    Repartition,
    SideRepartition,
    Sink,
    Source,
    Union,
    Window,
)

TaskKey = str | int  # a source topic, or an exchange operator's id


@dataclass
class GraphNode:
    """A task (``key`` set, ``operators`` listed) or a topic."""

    id: str
    kind: str  # "task" | "topic"
    label: str
    key: TaskKey | None = None
    reads_topic: bool = False  # a task fed by the fetcher, whose input can be paused
    operators: list[dict[str, str]] = field(default_factory=list)  # name, kind, describe
    column: int = 0
    row: int = 0


@dataclass(frozen=True)
class GraphEdge:
    source: str
    target: str
    kind: str  # "source" | "repartition" | "sink" | "late" | a partitioner's name
    label: str  # the topic, or the partitioner


@dataclass(frozen=True)
class Figures:
    """What a worker measured over its last seconds (`weir.service.history.History`), per
    task key and per written topic; shares are 0..1."""

    records_per_s: dict[TaskKey, float]
    busy: dict[TaskKey, float]  # the busiest slot's share of time in the task
    backpressure: dict[str, float]  # per source topic: the most held-back slot's share
    produced_per_s: dict[str, float]


class JobGraph:
    """Nodes and edges of one physical plan (steps in the module docstring)."""

    def __init__(self) -> None:
        self.nodes: dict[str, GraphNode] = {}
        self.edges: list[GraphEdge] = []

    @classmethod
    def of(cls, plan: PhysicalPlan) -> JobGraph:
        graph = cls()
        for root in plan.roots:
            source = root.op
            task = graph._task(f"input:{source.topic}", source.topic, reads_topic=True)
            if isinstance(source, MergedSource):
                what = f"Inputs of {', '.join(c.op.name for c in root.children)}"
            else:
                what = "Source" if isinstance(source, Source) else "Repartition"
            task.label = f"{what}: {source.topic}"
            if isinstance(source, Source):
                topic = graph._topic(source.topic)
                graph.edges.append(GraphEdge(topic.id, task.id, "source", source.topic))
            graph._chain(root, task)
        graph._layout()
        return graph

    def _task(self, node_id: str, key: TaskKey, reads_topic: bool = False) -> GraphNode:
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = GraphNode(node_id, "task", "", key, reads_topic)
        return node

    def _topic(self, topic: str) -> GraphNode:
        node_id = f"topic:{topic}"
        if node_id not in self.nodes:
            self.nodes[node_id] = GraphNode(node_id, "topic", topic)
        return self.nodes[node_id]

    def _chain(self, node: PlanNode, task: GraphNode) -> None:
        """Add ``node`` to ``task`` and follow its outputs."""
        op = node.op
        if isinstance(op, Union):  # one task behind all its inputs, chained once
            behind = self._task(f"exchange:{op.id}", op.id)
            self.edges.append(GraphEdge(task.id, behind.id, "union", "union"))
            if not behind.label:
                behind.label = f"Union: {op.name} of {', '.join(op.inputs)}"
                for child in node.children:
                    self._chain(child, behind)
            return
        if op.exchanges:  # the records leave the slot: the operators after it are a task
            behind = self._task(f"exchange:{op.id}", op.id)
            partitioner = op.partitioner if isinstance(op, HashExchange | Partition) else "hash"
            behind.label = f"{str(partitioner).capitalize()} exchange: {op.name}"
            self.edges.append(GraphEdge(task.id, behind.id, str(partitioner), str(partitioner)))
            for child in node.children:
                self._chain(child, behind)
            return
        if not isinstance(op, Partition):  # forward and rescale move nothing
            task.operators.append({"name": op.name, "kind": op.kind, "describe": op.describe()})
        if isinstance(op, Repartition):
            reader = self._task(f"input:{op.topic}", op.topic, reads_topic=True)
            self.edges.append(GraphEdge(task.id, reader.id, "repartition", op.topic))
        elif isinstance(op, SideRepartition):
            reader = self._task(f"input:{op.topic}", op.topic, reads_topic=True)
            label = f"{op.topic} side {op.side}" + (" (broadcast)" if op.broadcast else "")
            self.edges.append(GraphEdge(task.id, reader.id, "side", label))
        elif isinstance(op, Sink):
            self.edges.append(GraphEdge(task.id, self._topic(op.topic).id, "sink", op.topic))
        elif isinstance(op, Window) and op.late_topic is not None:
            late = self._topic(op.late_topic)
            self.edges.append(GraphEdge(task.id, late.id, "late", op.late_topic))
        for child in node.children:
            self._chain(child, task)

    def _layout(self) -> None:
        """Columns by longest path (the graph is acyclic: a repartition topic's reader
        comes after its writer), rows in plan order."""
        for _ in self.nodes:  # at most as many passes as nodes
            moved = False
            for edge in self.edges:
                target, source = self.nodes[edge.target], self.nodes[edge.source]
                if target.column <= source.column:
                    target.column, moved = source.column + 1, True
            if not moved:
                break
        rows: dict[int, int] = {}
        for node in self.nodes.values():
            node.row = rows.get(node.column, 0)
            rows[node.column] = node.row + 1

    def to_json(self, figures: Figures | None) -> dict[str, Any]:
        """Nodes and edges with the worker's current figures (None: none yet)."""
        nodes = []
        for node in self.nodes.values():
            out: dict[str, Any] = {
                "id": node.id,
                "kind": node.kind,
                "label": node.label,
                "column": node.column,
                "row": node.row,
            }
            if node.kind == "task":
                out["operators"] = node.operators
                if figures is not None:
                    key = node.key
                    out["records_per_s"] = figures.records_per_s.get(key, 0.0)
                    out["busy"] = figures.busy.get(key, 0.0)
                    held = figures.backpressure if node.reads_topic else {}
                    out["backpressure"] = held.get(key, 0.0) if isinstance(key, str) else 0.0
            nodes.append(out)
        edges = []
        for edge in self.edges:
            out = {"source": edge.source, "target": edge.target, "kind": edge.kind}
            out["label"] = edge.label
            if figures is not None:
                if edge.kind in ("sink", "late"):
                    rate = figures.produced_per_s.get(edge.label, 0.0)
                else:  # what the target task takes in
                    rate = figures.records_per_s.get(self.nodes[edge.target].key, 0.0)
                out["records_per_s"] = rate
            edges.append(out)
        return {"nodes": nodes, "edges": edges}
