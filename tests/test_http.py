"""The worker's HTTP side: readiness through restores, state queries, the status page."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import orjson
import pytest

from tests.kafka_fixture import consume_all, produce_json
from tests.waiting import wait_for
from tests.workers import WorkerProcess, job_env


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


class ReadyWatcher(threading.Thread):
    """Polls /ready every 20 ms and keeps the distinct states in order."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.seen, self.stop = port, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            code, body = _get(self.port, "/ready")
            state = (code, body.decode().strip())
            if code and (not self.seen or self.seen[-1] != state):
                self.seen.append(state)
            time.sleep(0.02)


def _keyed(n: int, start: int = 0, partition: int | None = None) -> list[dict]:
    return [{"n": start + i, "k": f"key{start + i}"} for i in range(n)]


def test_ready_state_queries_and_restore(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(partitions=2), new_topic(partitions=2)
    group = f"g-{uuid.uuid4().hex}"
    env = job_env(in_=src, out=out)
    args = ["--checkpoint-interval-ms", "300", "--kafka", "session.timeout.ms=6000"]
    produce_json(kafka_bootstrap, src, _keyed(4000), key=lambda r: r["k"].encode())
    a = WorkerProcess(
        "keyed_count.py", kafka_bootstrap, group, "a", tmp_path, env=env,
        args=[*args, "--state-dir", str(tmp_path / "a")],
    )  # fmt: skip
    watcher = ReadyWatcher(a.http_port)
    watcher.start()
    b = None
    try:
        a.wait_running()
        assert len(consume_all(kafka_bootstrap, out, expected=4000, timeout=60)) == 4000
        wait_for(lambda: _get(a.http_port, "/ready")[0] == 200, 20, "a ready", every=0.1)
        assert watcher.seen[-1][0] == 200

        # Interactive queries: an owned key answers with its committed count.
        time.sleep(1)  # let a checkpoint apply the last counts
        code, body = _get(a.http_port, "/state/counts/key17")
        assert code == 200, body
        answer = orjson.loads(body)
        assert answer["value"] == {"key": "key17", "count": 1, "last": 17}
        assert answer["worker_id"] == "a"
        code, body = _get(a.http_port, "/state/nope/key17")
        assert code == 404 and b"counts" in body

        # b joins with an empty state dir; a keeps one partition. Then b gets many
        # new records, so when b leaves, a restores a long changelog tail.
        b = WorkerProcess(
            "keyed_count.py", kafka_bootstrap, group, "b", tmp_path, env=env,
            args=[*args, "--state-dir", str(tmp_path / "b")],
        )  # fmt: skip

        def one_each() -> bool:
            sa, sb = a.status(), b.status()
            return bool(sa and sb and len(sa["partitions"]) == 1 and len(sb["partitions"]) == 1)

        wait_for(one_each, 60, "a and b owning one partition each")
        b_part = int(b.status()["partitions"][0].rsplit("-", 1)[1])
        a_only = [r for r in _keyed(40000, start=4000)]
        produce_json(kafka_bootstrap, src, a_only, key=lambda r: r["k"].encode())
        consume_all(kafka_bootstrap, out, expected=44000, timeout=120)
        # a key b owns: a names b as its owner
        owned_by_b = next(
            r["k"] for r in _keyed(4000)
            if orjson.loads(_get(b.http_port, f"/state/counts/{r['k']}")[1]).get("partition")
            == b_part and _get(b.http_port, f"/state/counts/{r['k']}")[0] == 200
        )  # fmt: skip
        code, body = _get(a.http_port, f"/state/counts/{owned_by_b}")
        assert code == 404 and orjson.loads(body)["owner"] == "b", body
        assert b.terminate(timeout=60) == 0

        def a_owns_both() -> bool:
            st = a.status()
            return bool(st and len(st["partitions"]) == 2 and not st["restoring"])

        wait_for(a_owns_both, 60, "a owning both partitions, restored")
        time.sleep(0.5)
    finally:
        watcher.stop.set()
        watcher.join(5)
        a.close()
        if b is not None:
            b.close()
    codes = [code for code, _ in watcher.seen]
    first_ready = codes.index(200)
    assert first_ready > 0 and set(codes[:first_ready]) == {503}, "503 until assigned and restored"
    later = [reason for code, reason in watcher.seen[first_ready:] if code == 503]
    assert any("restoring state" in reason for reason in later), watcher.seen
    assert codes[-1] == 200, "ready again after the restore"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_status_page_in_a_browser(kafka_bootstrap, new_topic, tmp_path):
    src, out = new_topic(partitions=3), new_topic()
    produce_json(kafka_bootstrap, src, _keyed(300), key=lambda r: r["k"].encode())
    worker = WorkerProcess(
        "tagged.py", kafka_bootstrap, f"g-{uuid.uuid4().hex}", "page-worker", tmp_path,
        env=job_env(in_=src, out=out), args=["--slots", "2", "--checkpoint-interval-ms", "200"],
    )  # fmt: skip
    try:
        worker.wait_running()
        consume_all(kafka_bootstrap, out, expected=300, timeout=60)
        time.sleep(1)
        url = f"http://127.0.0.1:{worker.http_port}/"
        flags = [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}",
            "--virtual-time-budget=4000",
        ]  # fmt: skip
        shot = tmp_path / "status.png"
        subprocess.run(
            [*flags, f"--screenshot={shot}", "--window-size=1200,900", url],
            capture_output=True, timeout=90, check=False,
        )  # fmt: skip
        dom = subprocess.run(
            [*flags, "--dump-dom", url], capture_output=True, timeout=90, check=False, text=True
        ).stdout
    finally:
        worker.close()
    assert shot.exists() and shot.stat().st_size > 5000, "a screenshot was taken"
    assert "page-worker" in dom and "running" in dom
    assert f"{src}-0" in dom and f"{src}-2" in dom, "partitions are listed"
    assert "<td>completed</td>" in dom, "recent checkpoints are listed"
    assert "source-" + src in dom, "the operator graph is shown"


def test_status_and_ready_answer_through_rebalances(kafka_bootstrap, new_topic, tmp_path):
    """/status and /ready read what the fetcher thread changes during rebalances (partitions,
    positions, lag, restores): polled without pause while workers join and leave, every
    answer is a whole response — never a server error or a dropped connection."""
    src, out = new_topic(partitions=6), new_topic(partitions=6)
    group = f"g-{uuid.uuid4().hex}"
    env = job_env(in_=src, out=out)
    args = ["--checkpoint-interval-ms", "100", "--kafka", "session.timeout.ms=6000", "--slots", "3"]
    produce_json(kafka_bootstrap, src, _keyed(3000), key=lambda r: r["k"].encode())
    a = WorkerProcess("keyed_count.py", kafka_bootstrap, group, "a", tmp_path, env=env,
                      args=[*args, "--state-dir", str(tmp_path / "a")])  # fmt: skip
    answers: list[tuple[str, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for path in ("/status", "/ready"):
                code, body = _get(a.http_port, path)
                if path == "/status" and code == 200:
                    orjson.loads(body)  # a whole JSON document
                answers.append((path, code))

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(3)]
    others: list[WorkerProcess] = []
    try:
        a.wait_running(60)
        for t in pollers:
            t.start()
        for name in ("b", "c"):  # joins: partitions move away from a
            others.append(WorkerProcess("keyed_count.py", kafka_bootstrap, group, name, tmp_path,
                                        env=env, args=[*args, "--state-dir",
                                                       str(tmp_path / name)]))  # fmt: skip
            others[-1].wait_running(60)
            produce_json(kafka_bootstrap, src, _keyed(1000, start=3000 + 1000 * len(others)),
                         key=lambda r: r["k"].encode())  # fmt: skip
        for worker in others:  # leaves: partitions move back to a
            assert worker.terminate(60) == 0
        wait_for(lambda: len(a.status()["partitions"]) == 6, 60, "a owns every partition again")
    finally:
        stop.set()
        for t in pollers:
            t.join(10)
        for worker in [a, *others]:
            worker.close()
    statuses = [code for path, code in answers if path == "/status"]
    readies = {code for path, code in answers if path == "/ready"}
    assert len(statuses) > 100, "polled throughout"
    assert set(statuses) == {200}, f"/status answered {sorted(set(statuses))}"
    assert readies <= {200, 503}, f"/ready answered {sorted(readies)}"
