"""The worker's consumer-group membership: one consumer per kind of input topic.

Kafka's cooperative-sticky assignor balances the *number* of partitions per
member over all the topics it assigns together. A job that reads its source
topics and, after a ``key_by(fn)``, its own repartition topics is two stages of
work: everything up to the key_by runs on the source partitions, the keyed
state on the repartition partitions. Assigned as one pool, a member joining a
running group is typically handed one whole topic — one worker does all of the
first stage, another all of the second — and adding processes buys nothing.

So a worker joins its group with one consumer per stage: one subscribed to the
source topics, one to the repartition topics. Each consumer only gets
partitions of the topics it subscribes to, so the assignor balances every stage
over the workers on its own (Kafka Streams gets the same from its own
task-aware assignor, which librdkafka cannot load). All members share the group
id, so offsets live where they always did; a checkpoint commits each member's
offsets with that member's group metadata, in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from weir.service.clients import ClientSettings
from weir.service.exceptions import DuplicateWorker, WorkerFailed

log = logging.getLogger(__name__)

DESCRIBE_S = 3.0  # a rebalance callback waits no longer for the group's member list
RebalanceCallback = Callable[[Consumer, list[TopicPartition]], None]


class GroupConsumers:
    """Consumers of one group, each subscribed to one stage's topics; dispatches by topic."""

    def __init__(
        self, settings: ClientSettings, stages: dict[str, list[str]], admin: AdminClient
    ) -> None:
        self.group = settings.group
        self.admin = admin
        named = {name: topics for name, topics in stages.items() if topics}
        self.stages = list(named.values())
        self.members = [settings.open(Consumer, settings.consumer(name)) for name in named]
        self._of = {
            topic: consumer
            for consumer, topics in zip(self.members, self.stages, strict=True)
            for topic in topics
        }
        self._next = 0
        # Every member id this process's consumers have had: after a session timeout
        # (a broker restart) a consumer rejoins under a new id while the coordinator
        # may still list its old one — that is this worker, not a duplicate.
        self.own_member_ids: set[str] = set()

    def subscribe(
        self, on_assign: RebalanceCallback, on_revoke: RebalanceCallback, on_lost: RebalanceCallback
    ) -> None:
        def assigned(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            member = _member_id(consumer)
            if member:
                self.own_member_ids.add(member)
            on_assign(consumer, partitions)

        for consumer, topics in zip(self.members, self.stages, strict=True):
            consumer.subscribe(topics, on_assign=assigned, on_revoke=on_revoke, on_lost=on_lost)

    def consume(self, num: int, timeout: float) -> list[Any]:
        """Up to ``num`` records from the members, taking turns so neither starves;
        waits at most ``timeout`` in all when none has anything. Error events are
        logged and left out; a fatal one raises `WorkerFailed`."""
        return _records(self._consume(num, timeout))

    def _consume(self, num: int, timeout: float) -> list[Any]:
        members = self.members
        if len(members) == 1:
            return members[0].consume(num, timeout)
        first = self._next
        self._next = (first + 1) % len(members)
        order = members[first:] + members[:first]
        for consumer in order:  # what is ready, without waiting
            msgs = consumer.consume(num, 0)
            if msgs:
                return msgs
        wait = timeout / len(members)
        for consumer in order:
            msgs = consumer.consume(num, wait)
            if msgs:
                return msgs
        return []

    def by_member(self, tps: list[TopicPartition]) -> list[tuple[Consumer, list[TopicPartition]]]:
        """``tps`` grouped by the member that reads them."""
        out: dict[int, tuple[Consumer, list[TopicPartition]]] = {}
        for tp in tps:
            consumer = self._of[tp.topic]
            out.setdefault(id(consumer), (consumer, []))[1].append(tp)
        return list(out.values())

    def pause(self, tps: list[TopicPartition]) -> None:
        for consumer, part in self.by_member(tps):
            consumer.pause(part)

    def resume(self, tps: list[TopicPartition]) -> None:
        for consumer, part in self.by_member(tps):
            consumer.resume(part)

    def seek(self, tp: TopicPartition) -> None:
        self._of[tp.topic].seek(tp)

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        """The group's committed offsets of ``tps``, with their metadata, once stable (a
        transaction committing offsets is waited for: the broker says so, and this
        raises to be tried again). Asked of the admin client: a member's own
        ``committed()`` waits while that member has a rebalance it has not been polled
        for yet, which a rollback must never wait on."""
        request = [ConsumerGroupTopicPartitions(self.group, tps)]
        futures = self.admin.list_consumer_group_offsets(
            request, require_stable=True, request_timeout=timeout
        )
        found = futures[self.group].result(timeout=timeout).topic_partitions
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return found

    def seek_to_committed(
        self, partitions: list[tuple[str, int]], timeout: float
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], str]]:
        """Rewind ``partitions`` to their committed offsets (the start where none is
        committed); returns the committed offsets found, and their metadata."""
        if not partitions:
            return {}, {}
        committed = self.committed([TopicPartition(t, p) for t, p in partitions], timeout)
        out, metadata = {}, {}
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                self.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                log.warning("seek %s[%d] to %d: %s", tp.topic, tp.partition, offset, exc)
            if tp.offset >= 0:
                out[(tp.topic, tp.partition)] = tp.offset
                if tp.metadata:
                    metadata[(tp.topic, tp.partition)] = tp.metadata
        return out, metadata

    def other_member_with(self, admin: AdminClient, group: str, client_id: str) -> str | None:
        """Another live member of ``group`` using ``client_id`` (a second worker with this
        worker's id), described; None if there is none or the group cannot be read."""
        mine = self.own_member_ids | set(filter(None, map(_member_id, self.members)))
        try:
            futures = admin.describe_consumer_groups([group], request_timeout=DESCRIBE_S)
            members = futures[group].result(timeout=DESCRIBE_S).members
        except (KafkaException, TimeoutError):  # the broker may be away: no answer
            return None
        for member in members:
            if member.client_id == client_id and member.member_id not in mine:
                return f"another group member on {member.host} uses this worker's id"
        return None

    def position(self, tp: TopicPartition) -> int:
        """The member's next offset to return for ``tp`` (past markers); -1001 if none."""
        return self._of[tp.topic].position([tp])[0].offset

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return self._of[tp.topic].get_watermark_offsets(tp, cached=cached)

    def close(self) -> None:
        """Leave the group: each member's revocation runs before it goes."""
        for consumer in self.members:
            consumer.close()


def _member_id(consumer: Consumer) -> str | None:
    """The consumer's member id; None once it is closed (while the worker stops, one
    stage's consumer may leave the group before another's last rebalance callback)."""
    try:
        return consumer.memberid()
    except RuntimeError:
        return None


def _records(msgs: list[Any]) -> list[Any]:
    """The records among ``msgs``; error events are logged, a fatal one raises —
    `DuplicateWorker` when another member took this worker's static id."""
    ok = [m for m in msgs if m.error() is None]
    if len(ok) != len(msgs):
        for m in msgs:
            err = m.error()
            if err is None:
                continue
            if "same group.instance.id" in err.str():
                raise DuplicateWorker(
                    "another worker joined the group with this worker's id (static membership"
                    f" fenced this one: {err.str()}); run each --worker-id once"
                )
            if err.fatal() or err.code() == KafkaError._FATAL:
                raise WorkerFailed(f"consumer failed: {err.str()}")
            log.warning("consumer: %s", err.str())
    return ok
