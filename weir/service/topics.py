"""Checks and creates the topics a job needs, before the worker joins its group, and keeps
what the topics it writes accept current while it runs (`LimitsRefresher`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from weir.operators.physical import PhysicalPlan
from weir.operators.plan import ErrorPolicy
from weir.service.clients import ClientSettings
from weir.service.exceptions import JobLoadError, KafkaUnavailable, TopicsMismatch

log = logging.getLogger(__name__)


def connect_admin(settings: ClientSettings, bootstrap: str, timeout_s: float) -> AdminClient:
    """An admin client that has answered a metadata request within ``timeout_s``."""
    # Silent: if Kafka cannot be reached, the one line below says so.
    admin = settings.open(AdminClient, {**settings.admin(), "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {bootstrap} within {timeout_s:.0f}s"
            f" ({settings.redact(exc.args[0].str())});"
            " check --bootstrap / WEIR_BOOTSTRAP"
        ) from None
    return admin


def partition_counts(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    metadata = admin.list_topics(timeout=timeout_s)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def require_topics(
    admin: AdminClient, sources: list[str], sinks: list[str], timeout_s: float
) -> None:
    """Fail with one line naming the first missing topic."""
    existing = partition_counts(admin, timeout_s)
    for role, topics in (("source", sources), ("sink", sinks)):
        for topic in topics:
            if topic not in existing:
                raise TopicsMismatch(
                    f"{role} topic {topic!r} does not exist; create it first"
                    f" (weir topics create {topic} --bootstrap ...)"
                )


def ensure_topic(
    admin: AdminClient,
    topic: str,
    partitions: int,
    timeout_s: float,
    config: dict[str, str] | None = None,
) -> None:
    """Create ``topic`` unless it exists (Weir's own topics: dead letters, later changelogs)."""
    if topic in partition_counts(admin, timeout_s):
        return
    metadata = admin.list_topics(timeout=timeout_s)
    replication = min(3, len(metadata.brokers))
    futures = admin.create_topics(
        [NewTopic(topic, partitions, replication, config=config or {})],
        operation_timeout=timeout_s,
    )
    try:
        futures[topic].result(timeout=timeout_s)
        log.info("created topic %s (%d partitions, replication %d)", topic, partitions, replication)
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise KafkaUnavailable(f"cannot create topic {topic!r}: {exc.args[0].str()}") from None
    deadline = time.monotonic() + timeout_s
    while partition_counts(admin, timeout_s).get(topic) != partitions:  # metadata catches up
        if time.monotonic() > deadline:
            raise KafkaUnavailable(
                f"topic {topic!r} was created but is not visible after {timeout_s:.0f}s"
            )
        time.sleep(0.1)


def delete_topics(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    """Delete ``topics``; one already gone (another worker deleted it first) is fine."""
    if not topics:
        return
    futures = admin.delete_topics(topics, operation_timeout=timeout_s)
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.warning("deleted topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise KafkaUnavailable(
                    f"cannot delete topic {topic!r}: {exc.args[0].str()}"
                ) from None
        except TimeoutError:
            raise KafkaUnavailable(
                f"deleting topic {topic!r} took longer than {timeout_s:.0f}s"
            ) from None


RECORD_OVERHEAD = 1024  # batch header, record framing and headers, with room to spare
CLOCK_MARGIN_MS = 60_000  # the broker judges timestamps by its own clock, later


@dataclass(frozen=True)
class TopicLimits:
    """What a topic's broker accepts: key + value bytes (``max.message.bytes`` less
    overhead) and, for CreateTime topics, record timestamps no further behind
    (``message.timestamp.before.max.ms``) or ahead (``message.timestamp.after.max.ms``,
    1 hour by default since Kafka 3.6) of the broker's clock. None: no limit."""

    max_bytes: int | None = None
    before_ms: int | None = None
    after_ms: int | None = None

    def bounds(self, now_ms: float) -> tuple[float, float, float]:
        """(largest size, earliest and latest timestamp) accepted now; `refusal` says why
        a record outside them is refused."""
        inf = float("inf")
        return (
            inf if self.max_bytes is None else self.max_bytes,
            -inf if self.before_ms is None else now_ms - self.before_ms + CLOCK_MARGIN_MS,
            inf if self.after_ms is None else now_ms + self.after_ms - CLOCK_MARGIN_MS,
        )

    def refusal(self, key: bytes | None, value: bytes, timestamp: int, now_ms: float) -> str | None:
        """Why the broker would refuse this record (one refusal fails the whole
        transaction), or None; timestamps within ``CLOCK_MARGIN_MS`` of a limit count as
        refused, since the broker's clock reads later than ours."""
        size = len(value) + len(key or b"")
        if self.max_bytes is not None and size > self.max_bytes:
            return f"record of {size} bytes exceeds the topic's limit of {self.max_bytes} bytes"
        if timestamp <= 0:
            return None  # the producer stamps it now
        if self.after_ms is not None and timestamp > now_ms + self.after_ms - CLOCK_MARGIN_MS:
            return (
                f"timestamp {timestamp} is more than message.timestamp.after.max.ms="
                f"{self.after_ms} ahead of now"
            )
        if self.before_ms is not None and timestamp < now_ms - self.before_ms + CLOCK_MARGIN_MS:
            return (
                f"timestamp {timestamp} is more than message.timestamp.before.max.ms="
                f"{self.before_ms} behind now"
            )
        return None


def capped(limit: TopicLimits, producer_max_bytes: int) -> TopicLimits:
    """``limit``, never above what the producer sends: its ``message.max.bytes`` less
    ``RECORD_OVERHEAD``. librdkafka refuses a larger record at ``produce``, counting its
    framing (at the default 1,000,000, a value of 999,970 bytes), while a topic's default
    ``max.message.bytes`` is larger: without the cap such a record passed the topic's
    check and was refused by the producer instead — a ``produce`` failure rather than
    ``too-large``, and an uncaught one where the outputs held after a barrier go out."""
    room = producer_max_bytes - RECORD_OVERHEAD
    return replace(limit, max_bytes=min(limit.max_bytes or room, room))


def topic_limits(admin: AdminClient, topics: list[str], timeout_s: float) -> dict[str, TopicLimits]:
    """What each topic the job writes accepts, from its configuration."""
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, t) for t in topics], request_timeout=timeout_s
    )
    return {
        resource.name: _limits({k: e.value for k, e in future.result(timeout=timeout_s).items()})
        for resource, future in futures.items()
    }


def _limits(config: dict[str, str | None]) -> TopicLimits:
    create_time = config.get("message.timestamp.type", "CreateTime") == "CreateTime"

    def number(name: str) -> int | None:
        value = config.get(name)
        return None if value is None or int(value) >= 2**62 else int(value)

    max_bytes = number("max.message.bytes")
    return TopicLimits(
        None if max_bytes is None else max_bytes - RECORD_OVERHEAD,
        number("message.timestamp.before.max.ms") if create_time else None,
        number("message.timestamp.after.max.ms") if create_time else None,
    )


class LimitsRefresher:
    """Keeps what written topics accept current while the worker runs: a topic's
    ``max.message.bytes`` or timestamp bounds can be changed under it (``kafka-configs``,
    ``weir topics``), and a record checked against a stale limit would fail its whole
    transaction.

    1. Every ``every_s`` (from the fetch loop, via `poll`), ask for the topics' configs
       without waiting (the admin client's futures).
    2. Once the answer is in, replace each changed entry of the shared ``limits`` dict
       in place — slots and the producer read that dict — through ``adjust`` (the
       changelogs cap theirs at the producer's own limit), and call ``changed`` with
       the topics whose limits moved. A failed or late answer is logged and asked again
       next time; the old limits stay meanwhile.
    """

    def __init__(
        self,
        admin: AdminClient,
        limits: dict[str, TopicLimits],
        adjust: Callable[[str, TopicLimits], TopicLimits],
        changed: Callable[[set[str]], None],
        every_s: float = 30.0,
    ) -> None:
        self.admin, self.limits, self.adjust, self.changed = admin, limits, adjust, changed
        self.every_s = every_s
        self._next = time.monotonic() + every_s
        self._pending: dict[Any, Any] | None = None

    def poll(self, now: float) -> None:
        if self._pending is None:
            if now >= self._next and self.limits:  # Step 1
                resources = [ConfigResource(ResourceType.TOPIC, t) for t in self.limits]
                self._pending = self.admin.describe_configs(resources, request_timeout=10)
            return
        if not all(f.done() for f in self._pending.values()):
            if now < self._next + 30:
                return
            log.warning("topic configs: no answer in 30 s; asking again later")
        else:
            self._apply(self._pending)  # Step 2
        self._pending, self._next = None, now + self.every_s

    def _apply(self, futures: dict[Any, Any]) -> None:
        moved = set()
        for resource, future in futures.items():
            try:
                config = {k: e.value for k, e in future.result().items()}
            except KafkaException as exc:
                log.warning("topic configs of %s: %s", resource.name, exc.args[0].str())
                continue
            new = self.adjust(resource.name, _limits(config))
            if self.limits.get(resource.name) != new:
                log.info("topic %s now accepts %s", resource.name, new)
                self.limits[resource.name] = new
                moved.add(resource.name)
        if moved:
            self.changed(moved)


def provision_repartition_topics(admin: AdminClient, plan: PhysicalPlan, timeout_s: float) -> None:
    """Create each repartition topic with its declared count (default: its upstream
    source's); refuse a declared count that differs from an existing topic's, as the
    keyed state behind it is partitioned by the existing count."""
    counts = partition_counts(admin, timeout_s)
    for source in plan.repartitions:
        topic, declared = source.topic, source.partitions
        have = counts.get(topic)
        if declared and have is not None and have != declared:
            raise JobLoadError(
                f"repartition topic {topic!r} has {have} partitions but the job's"
                f" key_by(partitions={declared}) asks for {declared}; the keyed state"
                f" behind it is partitioned by the existing count. Keep partitions={have},"
                " or start a new --group to repartition"
            )
        ensure_topic(admin, topic, declared or counts[source.upstream], timeout_s)


def provision_job_topics(
    admin: AdminClient, plan: PhysicalPlan, timeout_s: float
) -> tuple[dict[str, int], dict[str, TopicLimits]]:
    """Before a worker joins its group: check the job's own topics exist, create Weir's
    (repartition topics, the dead-letter topic). Returns the partition count of every
    topic the job reads, and what every topic it writes accepts."""
    require_topics(admin, plan.user_source_topics, plan.sink_topics, timeout_s)
    provision_repartition_topics(admin, plan, timeout_s)
    counts = partition_counts(admin, timeout_s)
    written = [*plan.sink_topics, *plan.repartition_topics]
    if plan.on_error == ErrorPolicy.DLQ:
        ensure_topic(admin, plan.dlq_topic, 1, timeout_s)
        written.append(plan.dlq_topic)
    read = {t: counts[t] for t in plan.source_topics}
    return read, topic_limits(admin, written, timeout_s)
