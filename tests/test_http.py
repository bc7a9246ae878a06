"""The worker's HTTP side: readiness through restores, state queries, the status page."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from tests.feeding import Feeder, n_key, numbered
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


class _Dom(HTMLParser):
    """The elements of a page's DOM, each as (tag, attributes, its own text)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text: list[str] = []
        self.elements.append((tag, {k: v or "" for k, v in attrs}, text))
        self._open.append(text)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a for t, a, _ in self.elements
            if t == tag and (cls is None or cls in a.get("class", "").split())
        ]  # fmt: skip


def _chromium(url: str, profile: Path, *args: str) -> str:
    """Headless Chromium on ``url``, after 5 s of the page's own (virtual) time."""
    flags = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
    ]  # fmt: skip
    done = subprocess.run(
        [*flags, *args, url], capture_output=True, timeout=120, check=False, text=True
    )
    return done.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_status_page_draws_the_dataflow_and_live_charts_in_a_browser(
    kafka_bootstrap, new_topic, tmp_path
):
    """A worker running tests/jobs/dataflow.py on the real broker, fed all along: in
    Chromium the page draws a box per task with its records/s, busy and backpressure
    shares, an edge per topic, exchange and repartition topic with its records/s, and
    four charts of the last minutes with data points."""
    src, out, counts = new_topic(partitions=3), new_topic(), new_topic()
    worker = WorkerProcess(
        "dataflow.py", kafka_bootstrap, f"g-{uuid.uuid4().hex}", "page-worker", tmp_path,
        env=job_env(in_=src, out=out, counts=counts, sleep_ms=1),
        args=["--slots", "2", "--checkpoint-interval-ms", "200",
              "--state-dir", str(tmp_path / "state")],
    )  # fmt: skip
    feeder = Feeder(kafka_bootstrap, src, numbered(), 300, key=n_key)
    try:
        worker.wait_running()
        feeder.start()
        wait_for(lambda: len(worker.history()) >= 8, 60, "8 seconds of history")
        wait_for(lambda: consume_all(kafka_bootstrap, counts, 1, 5), 60, "a closed window")
        url = f"http://127.0.0.1:{worker.http_port}/"
        shot = tmp_path / "status.png"
        _chromium(url, tmp_path / "chrome", f"--screenshot={shot}", "--window-size=1300,1000")
        dom = _Dom()
        dom.feed(_chromium(url, tmp_path / "chrome", "--dump-dom"))
        status = worker.status()
        samples = worker.history()
        code, body = _get(worker.http_port, f"/history?since={samples[-3]['t']}")
        newer = orjson.loads(body)["samples"] if code == 200 else body
        refused = _get(worker.http_port, "/history?since=yesterday")
    finally:
        feeder.halt()
        worker.close()
    assert shot.exists() and shot.stat().st_size > 20000, "a screenshot was taken"
    assert len(newer) >= 2 and newer[:2] == samples[-2:], "only the samples after `since`"
    assert refused[0] == 400 and b"since" in refused[1]

    # The graph: three tasks (the source's chain, the one behind the hash exchange, the
    # one reading the repartition topic), three topics, and their edges.
    tasks = {t["data-id"]: t for t in dom.find("g", "task")}
    repartitioned = f"input:{status['group']}.by-digit-counted.repartition"
    (exchanged,) = [t for t in tasks if t.startswith("exchange:")]
    assert set(tasks) == {"input:" + src, exchanged, repartitioned}, sorted(tasks)
    for task in tasks.values():
        assert float(task["data-records-per-s"]) > 50, task
        assert 0 <= float(task["data-busy"]) <= 1 and 0 <= float(task["data-backpressure"]) <= 1
    assert float(tasks["input:" + src]["data-busy"]) > 0.02, "1 ms per record keeps it busy"
    topics = {t["data-id"] for t in dom.find("g", "topic")}
    assert topics == {f"topic:{src}", f"topic:{out}", f"topic:{counts}"}
    edges = {(e["data-kind"], e["data-target"]): e for e in dom.find("g", "edge")}
    assert {kind for kind, _ in edges} == {"source", "hash", "repartition", "sink"}, edges
    for (kind, target), edge in edges.items():
        rate = float(edge["data-records-per-s"])
        assert rate > (0 if target == f"topic:{counts}" else 50), (kind, target, rate)
    texts = " ".join(" ".join(text) for tag, _, text in dom.elements if tag == "text")
    assert "rec/s" in texts and "busy" in texts and "backpressure" in texts
    assert "hash exchange" in texts and "repartition topic" in texts

    # The charts: throughput, consumer lag, watermark lag, checkpoint duration.
    charts = {c["id"]: c for c in dom.find("svg", "chart")}
    assert set(charts) == {"chart-throughput", "chart-lag", "chart-watermark",
                           "chart-checkpoint"}  # fmt: skip
    for chart_id, chart in charts.items():
        assert int(chart["data-points"]) >= 5, f"{chart_id} has no data"
    lines = {p["data-series"]: p for p in dom.find("polyline")}
    for series in ("records_in_per_s", "records_out_per_s", "consumer_lag", "watermark_lag_s",
                   "checkpoint_s"):  # fmt: skip
        points = lines[series]["points"].split()
        assert len(points) == int(lines[series]["data-points"]) >= 5, series
        assert all(len(p.split(",")) == 2 for p in points), series

    # The tables and the summary are still there.
    page = " ".join(" ".join(text) for _, _, text in dom.elements)
    assert "page-worker" in page and "running" in page
    assert f"{src}-0" in page and f"{src}-2" in page, "partitions are listed"
    assert "completed" in page, "recent checkpoints are listed"


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
