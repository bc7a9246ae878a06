"""Interactive state queries (Kafka Streams' interactive queries): ``GET /state/<op>/<key>``.

A worker answers for the keys it owns, from committed state (what the last
checkpoint applied to RocksDB — never a value a later rollback could undo).
For a key it does not own it names the worker that does, from the consumer
group's assignment, so a client can ask there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import KafkaException

from weir.operators.aggregates import compile_aggregates
from weir.operators.plan import Aggregate, Process, Reduce, Window
from weir.operators.timers import EVENT, PROCESSING
from weir.operators.windowed import window_function
from weir.service.partitioner import partition_for
from weir.state.layout import state_key

if TYPE_CHECKING:
    from weir.service.worker import Worker


_SECTIONS = {"v": "value_state", "l": "list_state", "m": "map_state"}
_DOMAINS = {EVENT: "event", PROCESSING: "processing"}


def present_state(node: Any, key: Any, value: Any) -> Any:
    """A key's stored state as people read it: a running reduce or aggregate as the
    operator emits it, a window operator's open windows with their results so far, a
    process function's value, list and map states by name and its pending timers.
    The state query endpoint and `weir.testing.JobTester.state` show this."""
    if isinstance(node, Reduce):
        return {"key": key, **value} if isinstance(value, dict) else {"key": key, "value": value}
    if isinstance(node, Aggregate):
        functions = compile_aggregates(node.fields)
        return {"key": key} | {
            name: f.result(acc) for (name, f), acc in zip(functions.items(), value, strict=True)
        }
    if isinstance(node, Window):
        fn = window_function(node)
        windows = []
        for start, end, acc, fired in value["w"]:
            result = fn.result(key, start, end, acc)
            fields = result if isinstance(result, dict) else {"value": result}
            windows.append({"window_start": start, "window_end": end, "fired": fired, **fields})
        return {"key": key, "open_windows": windows}
    if isinstance(node, Process):
        shown: dict[str, Any] = {"key": key}
        for section, name in _SECTIONS.items():
            shown[name] = value.get(section, {})
        timers = value.get("t", {})
        shown["timers"] = {name: timers.get(domain, []) for domain, name in _DOMAINS.items()}
        return shown
    return value


def query_state(worker: Worker, operator: str, key: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one key of one stateful operator."""
    ops = {state.name: (state.op, state.input_topic) for state in worker.plan.stateful}
    if operator not in ops:
        return 404, {"error": f"no stateful operator {operator!r}", "operators": sorted(ops)}
    if worker.store is None:
        return 503, {"error": "state is not open yet"}
    node, topic = ops[operator]
    state = next(op.states[0] for op in worker.changelogs.operators if op.name == operator)
    key_bytes = key.encode()
    owned = sorted(p for t, p in worker.router.pins if t == topic)
    for p in owned:
        if (topic, p) in worker.rebalancer.restoring:
            continue
        data = worker.store.get(state, state_key(p, key_bytes, worker.plan.max_key_groups))
        if data is not None:
            body = {
                "operator": operator,
                "partition": p,
                "worker_id": worker.worker_id,
                "checkpoint": worker.store.last_checkpoint(),
                "value": present_state(node, key, orjson.loads(data)),
            }
            return 200, body
    partitions = worker.topic_partitions.get(topic)
    if not partitions:
        return 404, {"error": f"key {key!r} not found", "owned_partitions": owned}
    partition = partition_for(key_bytes, partitions)
    body: dict[str, Any] = {
        "error": f"key {key!r} is not in this worker's state",
        "partition": partition,
        "worker_id": worker.worker_id,
    }
    if partition in owned:
        body["error"] = f"key {key!r} has no state (yet)"
        return 404, body
    body["owner"] = _owner(worker, topic, partition)
    return 404, body


def _owner(worker: Worker, topic: str, partition: int) -> str | None:
    """The worker id of the group member assigned ``topic[partition]``, if any."""
    try:
        futures = worker.admin.describe_consumer_groups([worker.group], request_timeout=5)
        description = futures[worker.group].result(timeout=5)
    except KafkaException:
        return None
    prefix = f"{worker.group}."
    for member in description.members:
        assignment = member.assignment.topic_partitions if member.assignment else []
        if any(tp.topic == topic and tp.partition == partition for tp in assignment):
            client = member.client_id or ""
            return client[len(prefix) :] if client.startswith(prefix) else client
    return None
