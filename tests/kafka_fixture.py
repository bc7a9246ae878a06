"""Pytest plugin: one real Kafka broker per test session, plus topic, I/O and offset helpers.

Weir's guarantees (transactions, read_committed, consumer groups) can only be tested
against a real broker, so every integration test shares one session broker chosen in
this order: an external one named by ``KAFKA_BOOTSTRAP``; a testcontainers Kafka if a
Docker engine answers; otherwise the project's own JVM broker (``weir.service.local_kafka``),
which needs only Java and Maven. Each test gets fresh, uniquely named topics instead of
a fresh broker, which keeps tests isolated without paying broker startup per test.

Fault tests that stop, kill or cut off the broker get their own instead (``own_kafka``):
a local JVM broker on a data dir of the test's, behind a fault proxy (tests/netfault.py).

Enable with ``pytest_plugins = ["tests.kafka_fixture"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.feeding import KeyFn, PartitionFn, ValueFn, message, send
from tests.netfault import FaultProxy
from tests.reading import TopicReader
from weir.service.local_kafka import LocalKafka

# Kafka 3.9 in KRaft mode; testcontainers' KafkaContainer drives Confluent's image scripts.
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"
TOPIC_READY_TIMEOUT = 30.0


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _start_container() -> tuple[str, Callable[[], None]]:
    from testcontainers.community.kafka import KafkaContainer

    container = (
        KafkaContainer(KAFKA_IMAGE)
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    container.start()
    return container.get_bootstrap_server(), container.stop


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of the session's broker (external, container or local JVM)."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if _docker_answers():
        bootstrap, stop = _start_container()
    else:
        broker = LocalKafka()
        stop = broker.stop
        # Registered before start(): a run interrupted mid-start must not leak the JVM.
        atexit.register(stop)
        _stop_on_sigterm(stop)
        bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        stop()


class OwnKafka:
    """A test's own single-node broker, which it may stop, kill and restart, with a fault
    proxy in front of it.

    - ``bootstrap``: direct, for the test's own clients (topics, input, checking output);
    - ``proxied_bootstrap``: through ``proxy`` (a `FaultProxy`), for the clients under
      test: the broker advertises the proxy's port on a second listener, so their broker
      connections after bootstrap go through the proxy as well;
    - `stop` (SIGTERM, controlled shutdown), `kill` (SIGKILL) and `start` (again, on the
      same data dir and the same ports, so clients reconnect to the address they know).
    """

    def __init__(self, data_dir: Any) -> None:
        port, listener = _free_ports(2)
        self.proxy = FaultProxy(("127.0.0.1", listener))
        self.broker = LocalKafka(port=port, data_dir=data_dir, proxied=(listener, self.proxy.port))
        self.bootstrap = f"127.0.0.1:{port}"
        self.proxied_bootstrap = f"127.0.0.1:{self.proxy.port}"

    def start(self, timeout: float = 90.0) -> None:
        self.broker.start(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self.broker.stop(timeout)

    def kill(self) -> None:
        self.broker.kill()

    def new_topic(self, partitions: int, config: dict | None = None, name: str = "") -> str:
        """Create a topic (uniquely named unless ``name`` is given); returns once usable."""
        name = name or f"t-{uuid.uuid4().hex}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        spec = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=1,
            config={k: str(v) for k, v in (config or {}).items()},
        )
        admin.create_topics([spec], operation_timeout=TOPIC_READY_TIMEOUT)[name].result(
            timeout=TOPIC_READY_TIMEOUT
        )
        _wait_topic_ready(admin, name, partitions)
        return name

    def close(self) -> None:
        self.broker.stop()
        self.proxy.close()


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    """A started `OwnKafka` for this test alone, stopped and removed afterwards."""
    kafka = OwnKafka(tmp_path_factory.mktemp("own-kafka"))
    atexit.register(kafka.broker.stop)  # an interrupted run must not leak the JVM
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.close()
        atexit.unregister(kafka.broker.stop)


def _stop_on_sigterm(stop: Callable[[], None]) -> None:
    """Stop the broker when pytest gets SIGTERM (a cancelled CI job, ``timeout``), then die.

    The broker JVM runs in its own session, so signals sent to pytest's process group
    never reach it, and atexit handlers do not run when a signal kills the interpreter.
    Only installed over the default disposition, never over somebody else's handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, _frame: object) -> None:
        stop()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[AdminClient]:
    """An AdminClient for the session broker, silent about it going away at the end."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
    yield admin
    del admin
    gc.collect()  # destroy the client before the broker stops


@pytest.fixture
def new_topic(kafka_admin: AdminClient) -> Callable[..., str]:
    """Factory creating a uniquely named topic and returning its name once it is usable."""

    def create(partitions: int = 1, config: dict | None = None, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex}"
        spec = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=1,
            config={k: str(v) for k, v in (config or {}).items()},
        )
        kafka_admin.create_topics([spec], operation_timeout=TOPIC_READY_TIMEOUT)[name].result(
            timeout=TOPIC_READY_TIMEOUT
        )
        _wait_topic_ready(kafka_admin, name, partitions)
        return name

    return create


def _wait_topic_ready(admin: AdminClient, topic: str, partitions: int) -> None:
    """Wait until metadata shows every partition of ``topic`` with a leader."""
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            meta = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        except KafkaException:
            meta = None
        if (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 for p in meta.partitions.values())
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"topic {topic} not ready after {TOPIC_READY_TIMEOUT}s")


def produce_json(
    bootstrap: str,
    topic: str,
    records: Iterable[Any],
    key: KeyFn | None = None,
    partition: int | PartitionFn | None = None,
    timeout: float = 30.0,
    value: ValueFn | None = None,
) -> None:
    """Produce ``records`` as JSON values (idempotently, acks=all) and wait for delivery.

    ``key`` maps a record to its key (str or bytes), ``partition`` to its partition
    (or one number pins them all), ``value`` to what is written (default: the record;
    see tests/feeding.py). Raises on any delivery error or if delivery does not finish
    in time.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    try:
        for record in records:
            send(producer, topic, **message(record, value, key, partition), on_delivery=on_delivery)
            producer.poll(0)
        remaining = producer.flush(timeout)
    finally:
        producer.purge()  # whatever is still queued has failed: nothing to wait for
    if errors:
        raise KafkaException(errors[0])
    if remaining:
        raise TimeoutError(f"{remaining} records to {topic} not delivered within {timeout}s")


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None,
    timeout: float,
    read_committed: bool = True,
    decode_json: bool = True,
    partial: bool = False,
) -> list[dict]:
    """Read ``topic`` from the beginning of every partition, bounded by ``timeout``.

    Stops once ``expected`` records have arrived, or, with ``expected=None``, once every
    partition has been read to its end (for read_committed: its last stable offset).
    Returns the dicts of tests/reading.py (key, value, partition, offset, timestamp, ...).
    With ``decode_json`` values are parsed JSON and UTF-8 keys text; otherwise both stay
    bytes. With ``expected=None``, a read that has not reached the end by ``timeout``
    raises AssertionError naming each partition's last offset read and end — a test
    comparing "everything" must not compare a part of it — unless ``partial`` (a wait's
    probe, which reads again on its next round). With ``expected`` set, what was read by
    ``timeout`` is returned: the caller compares its length.
    """
    deadline = time.monotonic() + timeout
    reader = TopicReader(
        bootstrap, topic, read_committed, decode_json, timeout=max(0.1, deadline - time.monotonic())
    )
    try:
        while time.monotonic() < deadline:
            if expected is not None and len(reader.records) >= expected:
                break
            if expected is None and reader.read_to_end():
                break
            limit = 5000 if expected is None else expected - len(reader.records)
            reader.read(min(0.2, deadline - time.monotonic()), limit)
        else:
            if expected is None and not partial and not reader.read_to_end():
                raise AssertionError(
                    f"{topic} not read to its end in {timeout:.0f}s: {reader.progress()}"
                )
    finally:
        reader.close()
    return reader.records


# -- offsets ------------------------------------------------------------------------


def _watermarks(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (log start, end) offsets of every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"o-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in partitions
        }
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> the offset the next record will get (transaction markers count)."""
    return {p: high for p, (_low, high) in _watermarks(bootstrap, topic).items()}


def log_start_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> its first offset still in the log."""
    return {p: low for p, (low, _high) in _watermarks(bootstrap, topic).items()}


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Partition -> ``group``'s committed offset (0 where none), without joining the group."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=15)
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in tps}


def committed_reached(bootstrap: str, group: str, topic: str, transactional: bool = False) -> bool:
    """Has ``group`` committed the end of every partition of ``topic``? (False while the
    broker cannot tell, e.g. its group coordinator is still loading, or the topic does
    not exist yet.) A ``transactional`` topic — one a worker writes, e.g. a repartition
    topic — ends with a commit marker, which a committed offset does not pass: each
    partition then counts as read once it has records and the group has committed all
    but that last offset."""
    try:
        ends = end_offsets(bootstrap, topic)
        got = committed_offsets(bootstrap, group, topic)
    except KafkaException:
        return False
    if not transactional:
        return bool(ends) and all(got[p] >= end for p, end in ends.items())
    return bool(ends) and all(end > 0 and got[p] + 1 >= end for p, end in ends.items())
