"""``--rename-state OLD=NEW``: carry a stateful operator's keyed state over to a new name.

Keyed state is found by operator name (`weir.service.upgrade`), so a rename has to move
it: the records of ``<group>.<OLD>.changelog`` are copied to
``<group>.<NEW>.changelog`` with their state names rewritten (``OLD.<part>`` becomes
``NEW.<part>``; `weir.state.layout` has the record format), then the old changelog is
deleted. The renamed operator then restores from its changelog like any other, and
the workers' local copies under the old name are dropped when their store opens.

`copy_state`, for one rename, before the worker joins its group:

1. Refuse while the group has live members: the old version's workers could still
   write the old changelog (stop them first).
2. Refuse unless the old changelog is partitioned like the new operator's input.
3. Open a transactional producer under ``<group>.rename.<NEW>``. Workers started
   together with the same flag all try; each one's ``init_transactions`` fences the
   one before, so only the last to start can commit a copy.
4. Copy every committed record of every partition, from the start to the end the
   partition had when the copy began, into one transaction, each to the same
   partition; a state the new operator does not keep (another kind of operator)
   aborts it.
5. Check again that the group has no live members, and commit.
6. Delete the old changelog. A copier fenced in steps 3-5 waits for this instead,
   and one whose reads fail because it happened meanwhile goes on as well.

All records are copied, in order, not only the latest per key: a copy that repeats an
interrupted or a concurrent one leaves the same state (the last write of a key
wins), and read_committed readers never see a copy that was aborted.
"""

from __future__ import annotations

import contextlib
import logging
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient

from weir.operators.physical import KeyedState
from weir.service.clients import ClientSettings
from weir.service.exceptions import KafkaUnavailable, StateMismatch
from weir.service.topics import delete_topics, ensure_topic, partition_counts
from weir.state.layout import changelog_key, split_changelog_key

log = logging.getLogger(__name__)

TRANSACTION_TIMEOUT_MS = 600_000  # the whole copy commits within this (brokers allow 15 min)
STALL_S = 120.0  # no progress this long: an open transaction holds the old changelog
FENCED_WAIT_S = 600.0  # a fenced copier waits this long for the other one to finish
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def renamed_state(state: str, old: str, new: KeyedState) -> str:
    """``OLD.<part>`` as ``NEW.<part>``, which ``new`` must keep (step 4)."""
    part = state[len(old) + 1 :] if state.startswith(old + ".") else None
    renamed = f"{new.name}.{part}"
    if part is None or renamed not in new.states:
        raise StateMismatch(
            f"--rename-state {old}={new.name}: the old changelog holds state {state!r}, which"
            f" operator {new.name!r} ({new.op.kind}) does not keep; a state carries over only"
            " to an operator of the same kind"
        )
    return renamed


def copy_state(
    settings: ClientSettings,
    admin: AdminClient,
    old: str,
    old_topic: str,
    new: KeyedState,
    timeout_s: float,
) -> None:
    """Steps 1-6 for one rename."""
    group = settings.group
    if _copied_by_another(admin, group, old, old_topic, new, timeout_s):  # Step 1
        return
    counts = partition_counts(admin, timeout_s)  # Step 2
    partitions, wanted = counts[old_topic], counts.get(new.input_topic)
    if partitions != wanted:
        raise StateMismatch(
            f"--rename-state {old}={new.name}: {old_topic} has {partitions} partitions but"
            f" {new.name}'s input {new.input_topic!r} has {wanted}; keyed state follows input"
            " partitions, so it carries over only to an input partitioned alike"
        )
    ensure_topic(admin, new.changelog, partitions, timeout_s, {"cleanup.policy": "compact"})
    copier = f"{group}.rename.{new.name}"
    producer = settings.open(Producer, settings.copier(copier, TRANSACTION_TIMEOUT_MS))
    try:
        producer.init_transactions(timeout_s)  # Step 3
        producer.begin_transaction()
        copied = _copy(settings, producer, old, old_topic, new, partitions)  # Step 4
        if _copied_by_another(admin, group, old, old_topic, new, timeout_s):  # Step 5
            _abort(producer, timeout_s)
            return
        producer.commit_transaction(timeout_s)
    except KafkaException as exc:
        error = _cause(producer, exc.args[0], timeout_s)
        if error.code() in _FENCED:
            log.info("another worker copies state %s to %s; waiting for it", old, new.name)
            _wait_deleted(admin, old_topic, timeout_s)
            return
        _abort(producer, timeout_s)
        if old_topic not in partition_counts(admin, timeout_s):
            return  # another worker copied it and deleted it while this one read it
        raise KafkaUnavailable(
            f"copying state {old} to {new.name} failed: {settings.redact(error.str())}"
        ) from None
    except BaseException:
        _abort(producer, timeout_s)
        raise
    finally:
        with contextlib.suppress(KafkaException):  # a fenced producer's queue: nothing to send
            producer.purge()
    log.warning("copied %d records of state %s to %s (%s)", copied, old, new.name, new.changelog)
    delete_topics(admin, [old_topic], timeout_s)  # Step 6


def _copy(
    settings: ClientSettings,
    producer: Producer,
    old: str,
    old_topic: str,
    new: KeyedState,
    partitions: int,
) -> int:
    """Step 4: every committed record up to each partition's end when the copy began."""
    consumer = settings.open(
        Consumer, {**settings.restore_consumer(), "client.id": f"{settings.group}.rename"}
    )
    try:
        ends = {}
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TP(old_topic, p), timeout=STALL_S)
            if high > low:
                ends[p] = high
        consumer.assign([TP(old_topic, p, OFFSET_BEGINNING) for p in ends])
        copied, last_progress = 0, time.monotonic()
        while ends:
            for m in consumer.consume(5000, 0.5):
                error = m.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    if m.offset() >= ends.get(m.partition(), 0):  # its read_committed end
                        ends.pop(m.partition(), None)
                    continue
                state, skey = split_changelog_key(m.key())
                key = changelog_key(renamed_state(state, old, new), skey)
                _produce(producer, new.changelog, key, m.value(), m.partition())
                copied += 1
                last_progress = time.monotonic()
            if time.monotonic() - last_progress > STALL_S:
                raise KafkaUnavailable(
                    f"copying state {old} to {new.name}: no progress for {STALL_S:.0f}s"
                    f" (partitions {sorted(ends)} of {old_topic}); an open transaction there"
                    " holds the copy back"
                )
        return copied
    finally:
        consumer.close()


def _produce(producer: Producer, topic: str, key: bytes, value: bytes | None, p: int) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition=p)
            return
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.1)


def _copied_by_another(
    admin: AdminClient, group: str, old: str, old_topic: str, new: KeyedState, timeout_s: float
) -> bool:
    """Steps 1 and 5: True when the old changelog is gone (another worker copied it);
    refuse while the group has live members and the old changelog is still there."""
    description = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group]
    try:
        members = description.result(timeout_s).members
    except (KafkaException, TimeoutError) as exc:
        raise KafkaUnavailable(f"cannot read the members of group {group!r}: {exc}") from None
    deadline = time.monotonic() + (timeout_s if members else 0.0)
    while True:  # with members: one of them may have copied it, and deleting takes a moment
        if old_topic not in partition_counts(admin, timeout_s):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if members:
        clients = ", ".join(sorted({m.client_id for m in members}))
        raise StateMismatch(
            f"--rename-state {old}={new.name}: group {group!r} has live members ({clients});"
            " stop every worker of the group before renaming state (the old version's"
            " workers still write the old changelog)"
        )
    return False


def _wait_deleted(admin: AdminClient, topic: str, timeout_s: float) -> None:
    """Until the winning copier deleted the old changelog (step 6)."""
    deadline = time.monotonic() + FENCED_WAIT_S
    while topic in partition_counts(admin, timeout_s):
        if time.monotonic() > deadline:
            raise KafkaUnavailable(
                f"another worker copying {topic} to its new name did not finish within"
                f" {FENCED_WAIT_S:.0f}s"
            )
        time.sleep(1.0)


def _cause(producer: Producer, error: KafkaError, timeout_s: float) -> KafkaError:
    """The error behind ``error``: once a copier is fenced mid-copy, its next ``produce``
    fails only with "Local: Fatal error"; a transactional call then names the cause
    (fenced, or another fatal error)."""
    if error.code() != KafkaError._FATAL:
        return error
    try:
        producer.abort_transaction(timeout_s)
    except KafkaException as exc:
        return exc.args[0]
    return error


def _abort(producer: Producer, timeout_s: float) -> None:
    try:
        producer.abort_transaction(timeout_s)
    except KafkaException as exc:  # not begun, or fenced: nothing of it commits anyway
        log.debug("abort after a failed copy: %s", exc)
