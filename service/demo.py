"""``weir demo``: the example job end to end, on a broker it starts if none is given.

Starts the local broker (unless ``--bootstrap``/``KAFKA_BOOTSTRAP`` names one),
creates the example's topics, writes sample readings, runs
``examples/sensor_stats.py`` in this process until all its outputs are
committed, prints some of them as a read_committed consumer sees them, and
stops everything it started.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from service.config import WorkerConfig
from service.exceptions import WeirError
from service.jobfile import load_job
from service.sample import produce_readings, readings
from service.topics import connect_admin, ensure_topic
from service.worker import Worker

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sensor_stats.py"


def _end_offsets(bootstrap: str, topic: str, admin: AdminClient) -> list[TopicPartition]:
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "weir-demo-probe"})
    try:
        ends = [probe.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in partitions]
        return [
            TopicPartition(topic, p, max(end, 0)) for p, end in zip(partitions, ends, strict=True)
        ]
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
    from service.local_kafka import LocalKafka, LocalKafkaError

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
        admin = connect_admin({"bootstrap.servers": bootstrap}, bootstrap, 15)
        for topic in (*job.source_topics(), *job.sink_topics()):
            ensure_topic(admin, topic, 3, 15)
        start = _end_offsets(bootstrap, "sensor-stats", admin)
        produce_readings(bootstrap, "sensors", readings(count))
        print(f"wrote {count} sample readings to 'sensors'")

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
        print(f"running {EXAMPLE.name} (2 slots, exactly-once) ...")
        outputs = _read(bootstrap, start, count, timeout_s=60)
        worker.stop()
        thread.join(30)
        print(f"read {len(outputs)} committed records from 'sensor-stats'; the first 10:")
        outputs = outputs[:count]
        for m in outputs[:10]:
            print(f"  key={m.key().decode()} value={orjson.loads(m.value())}")
        if len(outputs) < count:
            print(f"expected {count} outputs, got {len(outputs)}")
            return 1
        return 0
    finally:
        if broker is not None:
            broker.stop()
            print("local broker stopped")
