"""The state restorer against a real broker: where a changelog restore must end.

A worker killed with -9 mid-checkpoint leaves an open transaction in the changelog
partitions it wrote. Until the broker aborts it (after the dead producer's
``transaction.timeout.ms``), the partition's last stable offset stays at that
transaction's first record, and a read_committed reader sees nothing after it —
including what the next owner committed there. A restore that stopped at the last
stable offset would lose the next owner's committed changes for good, while the input
offsets committed with them say they are done (seen in CI as running totals that
skipped updates after a kill -9 and two rebalances).
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from weir.operators.physical import KeyedState
from weir.operators.plan import Reduce
from weir.service.metrics import Metrics
from weir.service.restore import Restorer
from weir.state.layout import changelog_key, key_of, state_key
from weir.state.store import StateStore

STATE = "counts.acc"
SOURCE = "source-topic"


def transactional(bootstrap: str, name: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": name})
    producer.init_transactions(30)
    return producer


def write(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    skey = state_key(0, key, 128)
    producer.produce(topic, value, changelog_key(STATE, skey), partition=0)


def wait_done(restorer: Restorer, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = restorer.finished()
        if done:
            return done
        assert restorer.error is None, restorer.error
        time.sleep(0.05)
    return []


def test_restore_reads_past_a_dead_workers_open_transaction(kafka_bootstrap, new_topic, tmp_path):
    """Changelog: committed ``a=1`` by the first owner; an open transaction ``a=999`` of a
    worker that died; then ``a=2``, ``b=1`` committed by the next owner. A restore must
    not finish while that transaction is open (it would miss ``a=2``/``b=1``), and once
    the transaction is aborted it must end with exactly ``a=2``, ``b=1``."""
    changelog = new_topic(partitions=1, config={"cleanup.policy": "compact"})
    first = transactional(kafka_bootstrap, f"first-{uuid.uuid4().hex}")
    first.begin_transaction()
    write(first, changelog, b"a", b"1")
    first.commit_transaction(30)
    dead = transactional(kafka_bootstrap, f"dead-{uuid.uuid4().hex}")
    dead.begin_transaction()
    write(dead, changelog, b"a", b"999")
    assert dead.flush(30) == 0  # in the log, never committed: as if killed here
    nxt = transactional(kafka_bootstrap, f"next-{uuid.uuid4().hex}")
    nxt.begin_transaction()
    write(nxt, changelog, b"a", b"2")
    write(nxt, changelog, b"b", b"1")
    nxt.commit_transaction(30)

    store = StateStore(tmp_path / "db", [STATE])
    restorer = Restorer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
         "isolation.level": "read_committed", "enable.partition.eof": True,
         "enable.auto.commit": False},
        AdminClient({"bootstrap.servers": kafka_bootstrap}),
        store,
        [KeyedState(Reduce(id=1, name="counts", fn=max), SOURCE, (STATE,), changelog)],
        Metrics("restore-test"),
        stall_timeout_s=60,
    )  # fmt: skip
    restorer.start()
    try:
        token = restorer.submit((SOURCE, 0))
        early = wait_done(restorer, 3.0)
        assert early == [], "restore finished while an open transaction hid committed records"
        dead.abort_transaction(30)  # what the broker does after the transaction timeout
        done = wait_done(restorer, 30.0)
        assert done == [((SOURCE, 0), token)], done
        state = {key_of(k): v for k, v in store.items(STATE, 0)}
        assert state == {b"a": b"2", b"b": b"1"}, state
        assert restorer.restored_records == 3  # a=1, then a=2 and b=1; never a=999
        end = store.changelog_offset("counts", 0)
        assert end is not None and end >= 5, end  # past both markers and the aborted record
    finally:
        restorer.stop()
        restorer.join(10)
        store.close()
