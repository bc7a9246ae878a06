"""Tests for the local KRaft broker and the session fixture every integration test uses.

The rest of the suite assumes the session broker supports transactions with
read_committed isolation, and that no broker JVM outlives the process that owns it
(leaked brokers hold ports and memory on CI machines). These tests check exactly that,
plus the detached ``weir kafka start|stop`` round trip. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tests.kafka_fixture import consume_all, produce_json
from weir.service.local_kafka import (
    STATE_FILE,
    LocalKafka,
    LocalKafkaError,
    cli_start,
    cli_stop,
    kafka_version,
)

ROOT = Path(__file__).resolve().parent.parent


def _pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (zombies have none)."""
    done = subprocess.run(
        ["ps", "-eww", "-o", "pid=,stat=,args="], capture_output=True, text=True, timeout=10
    )
    pids = []
    for line in done.stdout.splitlines():
        fields = line.split(None, 2)
        if len(fields) < 3:
            continue
        pid, stat, args = fields
        if text in args and not stat.startswith("Z") and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


def _alive(pid: int) -> bool:
    return pid in _pids_mentioning("kafka.Kafka")


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fixture_broker_answers_metadata(kafka_admin: AdminClient, new_topic) -> None:
    topic = new_topic(partitions=3, config={"cleanup.policy": "compact"}, prefix="meta")
    metadata = kafka_admin.list_topics(timeout=10)
    assert metadata.brokers
    assert len(metadata.topics[topic].partitions) == 3


def test_produce_json_and_consume_all_round_trip(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=2)
    records = [{"id": i, "user": f"u{i % 3}"} for i in range(10)]
    produce_json(kafka_bootstrap, topic, records, key=lambda r: r["user"])
    produce_json(kafka_bootstrap, topic, [{"id": 99}], partition=1)

    got = consume_all(kafka_bootstrap, topic, expected=11, timeout=30)

    assert sorted(r["value"]["id"] for r in got) == [*range(10), 99]
    assert {r["key"] for r in got} == {"u0", "u1", "u2", None}
    by_key = {}
    for r in got:
        by_key.setdefault(r["key"], set()).add(r["partition"])
    assert all(len(parts) == 1 for parts in by_key.values())
    assert all(r["timestamp"] > 0 and r["offset"] >= 0 for r in got)
    again = consume_all(kafka_bootstrap, topic, expected=None, timeout=30)  # reads to the end
    assert sorted((r["partition"], r["offset"]) for r in again) == sorted(
        (r["partition"], r["offset"]) for r in got
    )


def test_transactions_hide_aborted_records_from_read_committed(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = new_topic(partitions=2)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"test-{uuid.uuid4()}"}
    )
    producer.init_transactions(30)

    def transaction(ids: range, commit: bool) -> None:
        producer.begin_transaction()
        for i in ids:
            producer.produce(topic, key=str(i), value=json.dumps({"id": i}))
        # Flush first so aborted records really reach the log before the abort marker.
        assert producer.flush(30) == 0
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    transaction(range(0, 5), commit=True)
    transaction(range(100, 103), commit=False)
    transaction(range(5, 8), commit=True)

    committed = consume_all(kafka_bootstrap, topic, expected=None, timeout=30)
    everything = consume_all(kafka_bootstrap, topic, expected=11, timeout=30, read_committed=False)

    assert sorted(r["value"]["id"] for r in committed) == list(range(8))
    assert sorted(r["value"]["id"] for r in everything) == [*range(8), 100, 101, 102]


def test_local_kafka_stop_leaves_no_process_port_or_temp_dir() -> None:
    with LocalKafka() as broker:
        pid, data_dir = broker.pid, broker.data_dir
        port = int(broker.bootstrap.rsplit(":", 1)[1])
        assert pid is not None and data_dir is not None
        assert AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).brokers
        assert _alive(pid)
        assert _pids_mentioning(str(data_dir)) == [pid]

    assert broker.pid is None
    assert not _alive(pid)
    assert _pids_mentioning(str(data_dir)) == []
    assert _refuses_connections(port)
    assert not data_dir.exists()


def test_cli_start_detaches_and_cli_stop_stops(tmp_path: Path, capsys) -> None:
    data_dir = tmp_path / "cli-broker"
    port = _free_port()
    script = (
        "import sys; from pathlib import Path; from weir.service.local_kafka import cli_start; "
        f"sys.exit(cli_start({port}, Path({str(data_dir)!r})))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        # A separate process, so the broker has to outlive the command that started it.
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"127.0.0.1:{port}"
        state = json.loads((data_dir / STATE_FILE).read_text())
        pid = state["pid"]
        assert state["bootstrap"] == f"127.0.0.1:{port}"
        assert _alive(pid)
        admin = AdminClient({"bootstrap.servers": state["bootstrap"]})
        assert admin.list_topics(timeout=10).brokers

        assert cli_start(port, data_dir) == 0  # already running: reported, not restarted
        assert capsys.readouterr().out.strip() == state["bootstrap"]

        assert cli_stop(data_dir, port) == 0
        assert not _alive(pid)
        assert _refuses_connections(port)
        assert not (data_dir / STATE_FILE).exists()

        capsys.readouterr()
        assert cli_stop(data_dir, port) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no broker running" in err
    finally:
        for pid in _pids_mentioning(str(data_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_missing_java_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalKafkaError, match="java not found") as info:
        LocalKafka(cache_dir=tmp_path).start()
    assert "\n" not in str(info.value)


def test_failing_maven_reports_its_output(tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_mvn = bin_dir / "mvn"
    fake_mvn.write_text("#!/bin/sh\necho '[ERROR] no route to Maven Central'\nexit 1\n")
    fake_mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(LocalKafkaError, match="no route to Maven Central") as info:
        LocalKafka(cache_dir=tmp_path / "cache").start()
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache" / f"kafka-{kafka_version()}" / "libs").exists()
