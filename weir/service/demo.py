"""``weir demo``: the example job end to end, on a broker it starts if none is given.

Starts the local broker (unless ``--bootstrap``/``KAFKA_BOOTSTRAP`` names one),
creates the example's topics, writes sample readings, runs
``examples/sensor_stats.py`` (installed as ``weir.examples``) in this process
until all its outputs are committed, prints some of them as a read_committed
consumer sees them, and stops everything it started.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from importlib.resources import files
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from weir.operators.physical import compile_plan
from weir.service.clients import ClientSettings
from weir.service.config import WorkerConfig
from weir.service.exceptions import WeirError
from weir.service.jobfile import load_job
from weir.service.sample import produce_readings, readings
from weir.service.topics import connect_admin, ensure_topic
from weir.service.worker import Worker

EXAMPLE = Path(str(files("weir.examples").joinpath("sensor_stats.py")))
# what a topic created a moment ago answers until its partitions have leaders (the
# client does not flag all of them retriable)
_NO_LEADER_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
    }
)


def _end_offsets(bootstrap: str, topic: str, admin: AdminClient) -> list[TopicPartition]:
    """Each partition's end offset. A topic created a moment ago may not have its
    leaders yet (NOT_LEADER_FOR_PARTITION, unknown partition): asked again for up to
    30 s, as a client's own retries would."""
    deadline = time.monotonic() + 30
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "weir-demo-probe"})
    try:
        while True:
            try:
                partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
                ends = [
                    probe.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in partitions
                ]
                return [
                    TopicPartition(topic, p, max(end, 0))
                    for p, end in zip(partitions, ends, strict=True)
                ]
            except KafkaException as exc:
                err = exc.args[0]
                again = err.retriable() or err.code() in _NO_LEADER_YET
                if not again or time.monotonic() > deadline:
                    raise WeirError(f"reading the end of {topic!r}: {exc.args[0].str()}") from None
                time.sleep(0.5)
    finally:
        probe.close()


def _read(bootstrap: str, start: list[TopicPartition], want: int, timeout_s: float) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"weir-demo-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign(start)
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(1000, 0.5) if m.error() is None)
    finally:
        consumer.close()
    return out


def run_demo(bootstrap: str | None, count: int) -> int:
    from weir.service.local_kafka import LocalKafka, LocalKafkaError

    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
    broker = None
    if not bootstrap:
        print("starting a local Kafka broker (first run downloads Kafka's jars with Maven)...")
        broker = LocalKafka()
        try:
            bootstrap = broker.start()
        except LocalKafkaError as exc:
            raise WeirError(f"could not start the local Kafka broker: {exc}") from None
        print(f"broker up at {bootstrap}")
    try:
        job = load_job(str(EXAMPLE))
        settings = ClientSettings(WorkerConfig(bootstrap=bootstrap), "weir-demo", "weir-demo")
        admin = connect_admin(settings, bootstrap, 15)
        plan = compile_plan(job, job.name)
        for topic in (*plan.user_source_topics, *plan.sink_topics):
            ensure_topic(admin, topic, 3, 15)
        start = _end_offsets(bootstrap, "sensor-stats", admin)
        # A minute of event time, ending now, aligned to the 10 s windows: 6 windows
        # per sensor; the last closes once the sensors fall idle.
        now = int(time.time() * 1000)
        first = now - now % 10_000 - 60_000
        spacing = max(1, 60_000 // count)
        data = readings(count, tags=5, start_ms=first, spacing_ms=spacing)
        expected = len({(r["tag"], (r["ts"] - first) // 10_000) for r in data})
        produce_readings(bootstrap, "sensors", data)
        print(f"wrote {count} sample readings over 60 s of event time to 'sensors'")

        config = WorkerConfig(
            bootstrap=bootstrap,
            group=f"weir-demo-{uuid.uuid4().hex[:8]}",
            worker_id="demo",
            slots=2,
            checkpoint_interval_ms=500,
            log_level="warning",
        )
        worker = Worker(job, config)
        worker.prepare()
        thread = threading.Thread(target=worker.run, name="weir-demo-worker", daemon=True)
        thread.start()
        print(f"running {EXAMPLE.name} (2 slots, exactly-once; 10 s tumbling windows) ...")
        outputs = _read(bootstrap, start, expected, timeout_s=60)
        worker.stop()
        thread.join(30)
        results = sorted(
            (v for v in (orjson.loads(m.value()) for m in outputs) if v["window_start"] >= first),
            key=lambda v: (v["key"], v["window_start"]),
        )  # (an existing broker's topic may hold older readings too)
        outputs = results
        print(f"read {len(results)} committed window results from 'sensor-stats':")
        for v in results:
            start_s = time.strftime("%H:%M:%S", time.gmtime(v["window_start"] / 1000))
            print(
                f"  {v['key']:8} [{start_s}, +10s)  count={v['count']:3}  mean={v['mean']:6.2f}"
                f"  min={v['min']:5.1f}  max={v['max']:5.1f}"
            )
        if len(outputs) < expected:
            print(f"expected {expected} window results, got {len(outputs)}")
            return 1
        return 0
    finally:
        if broker is not None:
            broker.stop()
            print("local broker stopped")
