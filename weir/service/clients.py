"""Kafka client settings of one worker process, in one place.

Every client of the worker (the group consumers, the transactional producer, the
admin client and the restore consumer) starts from the same base — bootstrap
servers, a client id naming the worker, librdkafka's log routed to ours — and
then the settings its role needs. What the user passes with ``--kafka`` comes
last, so it wins: ``kafka.X`` reaches every client, ``kafka.consumer.X``,
``kafka.producer.X`` and ``kafka.admin.X`` one role only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import KafkaException

from weir.service.config import WorkerConfig
from weir.service.exceptions import ConfigError

if TYPE_CHECKING:
    from weir.service.topics import TopicLimits

ROLES = ("consumer", "producer", "admin")
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
Client = TypeVar("Client")


class ClientSettings:
    """Builds the librdkafka configuration of each of the worker's clients."""

    def __init__(self, config: WorkerConfig, group: str, transactional_id: str) -> None:
        self.config = config
        self.group = group
        self.transactional_id = transactional_id

    @property
    def transaction_timeout_ms(self) -> int:
        """Short, so a dead worker's open transaction blocks read_committed readers (and
        state restores) briefly — Kafka Streams uses 10 s — but longer than one epoch:
        a checkpoint interval plus the checkpoint timeout, with room to commit."""
        interval, timeout = self.config.checkpoint_interval_ms, self.config.checkpoint_timeout_ms
        return max(10000, 2 * interval + 5000, interval + timeout + 2000)

    @property
    def producer_max_bytes(self) -> int:
        """The largest record (key, value and headers) the producer sends: its
        ``message.max.bytes`` (librdkafka refuses a larger one before it leaves)."""
        value = str(self.passthrough("producer").get("message.max.bytes", ""))
        return int(value) if value.isdigit() else LIBRDKAFKA_MESSAGE_MAX_BYTES

    def common(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.config.bootstrap,
            "client.id": self.transactional_id,
            "logger": logging.getLogger("weir.kafka"),  # librdkafka's log, in our format
        }

    def passthrough(self, role: str) -> dict[str, str]:
        """``kafka.X`` goes to every client; ``kafka.consumer.X`` etc. to that one only."""
        out = {}
        for key, value in self.config.kafka.items():
            head, _, rest = key.partition(".")
            if head in ROLES:
                if head == role:
                    out[rest] = value
            else:
                out[key] = value
        return out

    def open(self, factory: Callable[[dict[str, Any]], Client], conf: dict[str, Any]) -> Client:
        """A client built from ``conf``; a setting librdkafka refuses stops the worker
        with one line in which no ``--kafka`` value appears (they may be secrets)."""
        try:
            return factory(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"Kafka client settings refused: {self.redact(str(exc))}") from None

    def redact(self, text: str) -> str:
        """``text`` with every ``--kafka`` value replaced by ``***``."""
        for value in sorted(self.config.kafka.values(), key=len, reverse=True):
            if value:
                text = text.replace(value, "***")
        return text

    def admin(self) -> dict[str, Any]:
        return {**self.common(), **self.passthrough("admin")}

    def consumer(self, stage: str | None = None) -> dict[str, Any]:
        """A member of the job's group: manual commits inside checkpoints, read_committed.

        With static membership (``membership="static"``) each stage's member joins as
        ``group.instance.id = <worker-id>.<stage>`` (KIP-345): a worker restarted within
        ``session.timeout.ms`` gets its partitions back without a rebalance, and a second
        live worker with the same id fences the first out of the group."""
        static = {}
        if stage is not None and self.config.membership == "static":
            static["group.instance.id"] = f"{self.transactional_id}.{stage}"
        return {
            **self.common(),
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "isolation.level": "read_committed",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 2000,
            "queued.max.messages.kbytes": 16384,
            # Notice a source topic that gains partitions within 30 s (default 5 min).
            "topic.metadata.refresh.interval.ms": 30000,
            # librdkafka >= 2.3 backs off 1 s once its prefetch queue is full, which
            # starves a fast pipeline on a backlog; keep refilling it promptly.
            "fetch.queue.backoff.ms": 10,
            **static,
            **self.passthrough("consumer"),
        }

    def restore_consumer(self) -> dict[str, Any]:
        """The restorer's consumer: assigned partitions only, never a group member."""
        return {
            **self.consumer(),
            "group.id": f"{self.group}.restore",
            "enable.partition.eof": True,
            "client.id": f"{self.transactional_id}.restore",
        }

    def copier(self, transactional_id: str, timeout_ms: int) -> dict[str, Any]:
        """A producer that copies a changelog to a new name in one transaction
        (`weir.service.state_rename`), under its own transactional id and timeout."""
        return {
            **self.common(),
            "client.id": transactional_id,
            "linger.ms": 20,
            "enable.idempotence": True,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": timeout_ms,
            **self.passthrough("producer"),
        }

    def producer(
        self, limits: dict[str, TopicLimits], on_delivery: Callable[[Any, Any], None] | None
    ) -> dict[str, Any]:
        """The worker's one producer; transactional under exactly-once. ``on_delivery``
        hears of each record the broker refused; None: no callback at all, which spares
        confluent-kafka a state allocation per record and a trampoline call per report
        (a transactional producer needs none: its commit fails naming the refusal)."""
        conf: dict[str, Any] = {
            **self.common(),
            "linger.ms": 5,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",  # the Java client's: same key, same partition
            "queue.buffering.max.messages": 500000,
            # Batches must fit the smallest topic limit, or the broker refuses them whole.
            "batch.size": min(
                [1_000_000, *(t.max_bytes + 512 for t in limits.values() if t.max_bytes)]
            ),
            # Never re-bootstrap. When every broker connection drops at once (a network
            # blip), librdkafka (seen with 2.16) re-bootstraps and decommissions its broker handles
            # but keeps a decommissioned one cached as the group coordinator, and the next
            # send_offsets_to_transaction waits on it for good, past its timeout. Without
            # re-bootstrap the handle reconnects and the call completes once the network
            # is back. The cost: a producer whose brokers all change address does not look
            # them up again (the deadline on every transactional call still replaces it).
            "metadata.recovery.strategy": "none",
        }
        if on_delivery is not None:
            conf.update({"delivery.report.only.error": True, "on_delivery": on_delivery})
        if self.config.exactly_once:
            conf["transactional.id"] = self.transactional_id
            conf["transaction.timeout.ms"] = self.transaction_timeout_ms
        conf.update(self.passthrough("producer"))
        return conf
