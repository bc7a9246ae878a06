"""Local state is never lost to a deployment mistake, and never trusted when stale.

- the same ``--worker-id`` and ``--state-dir`` started twice: the second stops with one
  line naming the directory; the first keeps running; a later start continues exactly
  once;
- local state from an earlier incarnation of the changelog (deleted and recreated, or a
  new cluster under an old volume): wiped and rebuilt, so results equal a clean run's.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka.admin import AdminClient

from tests.kafka_fixture import consume_all, produce_json
from tests.workers import WorkerProcess, WorkerThread, job_env

KEYS = 10


def _records(start: int, count: int) -> list[dict]:
    return [{"n": n} for n in range(start, start + count)]


def _produce(bootstrap: str, topic: str, records: list[dict]) -> None:
    produce_json(bootstrap, topic, records, key=lambda r: f"k{r['n'] % KEYS}".encode())


def _counts_by_key(outputs: list[dict]) -> dict[str, list[int]]:
    by_key: dict[str, list[int]] = defaultdict(list)
    for r in sorted(outputs, key=lambda r: r["value"]["last"]):
        by_key[r["value"]["key"]].append(r["value"]["count"])
    return by_key


def _assert_exactly_once(outputs: list[dict], total: int) -> None:
    assert sorted(r["value"]["last"] for r in outputs) == list(range(total)), "each input once"
    for key, counts in _counts_by_key(outputs).items():
        assert counts == list(range(1, len(counts) + 1)), f"{key}: counts {counts[:20]}"


def test_same_worker_id_and_state_dir_twice(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(partitions=3), new_topic(partitions=3)
    group = f"dup-{uuid.uuid4().hex[:12]}"
    env = job_env(in_=src, out=out)
    args = ["--state-dir", str(tmp_path / "state"), "--checkpoint-interval-ms", "200"]
    _produce(kafka_bootstrap, src, _records(0, 300))
    first = WorkerProcess("keyed_count.py", kafka_bootstrap, group, "w1", tmp_path, env, args)
    try:
        first.wait_running(90)
        assert len(consume_all(kafka_bootstrap, out, expected=300, timeout=90)) == 300
        logs = tmp_path / "second"  # its own log file: same worker id
        logs.mkdir()
        second = WorkerProcess("keyed_count.py", kafka_bootstrap, group, "w1", logs, env, args)
        try:
            code = second.wait(60)
            assert code == 2, f"the duplicate exited {code}: {second.log_tail()}"
            assert "is in use by another live process" in second.log_tail()
            assert f"pid {first.proc.pid}" in second.log_tail()
        finally:
            second.close()
        _produce(kafka_bootstrap, src, _records(300, 300))
        assert len(consume_all(kafka_bootstrap, out, expected=600, timeout=90)) == 600
        assert first.proc.poll() is None, "the first worker keeps running"
        assert first.terminate(60) == 0
    finally:
        first.close()
    _produce(kafka_bootstrap, src, _records(600, 300))
    again = WorkerProcess("keyed_count.py", kafka_bootstrap, group, "w1", tmp_path, env, args)
    try:
        again.wait_running(90)
        outputs = consume_all(kafka_bootstrap, out, expected=900, timeout=90)
        assert again.terminate(60) == 0
    finally:
        again.close()
    time.sleep(0.5)
    outputs = consume_all(kafka_bootstrap, out, expected=None, timeout=60)
    _assert_exactly_once(outputs, 900)


def test_local_state_from_another_changelog_is_rebuilt(kafka_bootstrap, new_topic, tmp_path):
    src, out1, out2 = new_topic(partitions=3), new_topic(partitions=3), new_topic(partitions=3)
    group = f"ahead-{uuid.uuid4().hex[:12]}"
    records = _records(0, 400)
    _produce(kafka_bootstrap, src, records)

    def run(out: str) -> list[dict]:
        worker = WorkerThread(
            "keyed_count.py", job_env(in_=src, out=out), bootstrap=kafka_bootstrap,
            group=group, worker_id="w1", slots=2, state_dir=str(tmp_path),
            checkpoint_interval_ms=200,
        )  # fmt: skip
        try:
            return consume_all(kafka_bootstrap, out, expected=len(records), timeout=90)
        finally:
            worker.stop()

    _assert_exactly_once(run(out1), len(records))
    # A new cluster under the old volume: the job's changelog and group are gone.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.delete_topics([f"{group}.counts.changelog"])[f"{group}.counts.changelog"].result(30)
    admin.delete_consumer_groups([group], request_timeout=30)[group].result(30)
    deadline = time.monotonic() + 30
    while f"{group}.counts.changelog" in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, "changelog not deleted"
        time.sleep(0.2)
    second = run(out2)
    _assert_exactly_once(second, len(records))  # as a clean run: counts start at 1 again


@pytest.mark.parametrize("membership", ["dynamic", "static"])
def test_same_worker_id_on_two_machines(kafka_bootstrap, new_topic, tmp_path, membership):
    """Two live workers with one id (other state directories: other machines): exactly
    one keeps running, the other stops with a line saying the id is taken; nothing is
    lost or doubled."""
    src, out = new_topic(partitions=3), new_topic(partitions=3)
    group = f"twice-{uuid.uuid4().hex[:12]}"
    env = job_env(in_=src, out=out)
    _produce(kafka_bootstrap, src, _records(0, 300))
    workers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        args = ["--state-dir", str(tmp_path / name / "state"), "--checkpoint-interval-ms", "200",
                "--membership", membership]  # fmt: skip
        workers.append(
            WorkerProcess(
                "keyed_count.py", kafka_bootstrap, group, "w1", tmp_path / name, env, args
            )
        )
        if name == "a":
            workers[0].wait_running(90)
            assert len(consume_all(kafka_bootstrap, out, expected=300, timeout=90)) == 300
    try:
        deadline = time.monotonic() + 90
        while all(w.proc.poll() is None for w in workers):
            assert time.monotonic() < deadline, "both workers still run with one id"
            _produce(kafka_bootstrap, src, [])
            time.sleep(0.5)
        stopped = next(w for w in workers if w.proc.poll() is not None)
        survivor = next(w for w in workers if w is not stopped)
        assert stopped.proc.returncode == 2, stopped.log_tail()
        assert "this worker's id" in stopped.log_tail() or "same group.instance.id" in (
            stopped.log_tail()
        ), stopped.log_tail()
        _produce(kafka_bootstrap, src, _records(300, 300))
        survivor.wait_running(90)
        outputs = consume_all(kafka_bootstrap, out, expected=600, timeout=120)
        time.sleep(3)
        assert survivor.proc.poll() is None, f"the survivor stopped: {survivor.log_tail()}"
        assert survivor.terminate(60) == 0
    finally:
        for w in workers:
            w.close()
    outputs = consume_all(kafka_bootstrap, out, expected=None, timeout=60)
    _assert_exactly_once(outputs, 600)
