"""Shared machinery for Weir's benchmarks: broker, topics, data, reading topics back,
child processes, waiting, percentiles and reports.

Every benchmark needs the same things, and getting them wrong quietly skews
numbers: a broker (an external one from ``KAFKA_BOOTSTRAP``, else the
project's own JVM broker), fresh topics per run, input written *before* the
processor starts (so the processor, not the producer, is the bottleneck), a
completion check that does not compete with the processor for CPU, timing taken
from the broker's append timestamps of the output records (so process start-up
and group join are excluded the same way for every contender), the CPU time and
peak RSS of the processor process alone, and a bounded wait everywhere.

Processes started here are registered and stopped on exit, even on errors or
SIGTERM, so a failed benchmark never leaves a worker or broker behind.

Every script reports the same way: a header naming the machine and versions
(`machine_header`), the command that produced the numbers (`command_line`), and
``results/<name>.json`` (everything) next to ``results/<name>.md`` (`write_report`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka import (
    libversion as librdkafka_version,
)
from confluent_kafka.admin import AdminClient, NewTopic

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TMP = RESULTS / "tmp"  # child logs; gitignored
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchmarkError(RuntimeError):
    """A benchmark run could not complete (timeout, child died, lost records)."""


# -- cleanup -------------------------------------------------------------------
_cleanups: list[Callable[[], None]] = []


def on_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` at interpreter exit (LIFO), also after SIGTERM; errors are ignored."""
    _cleanups.append(fn)


def _run_cleanups() -> None:
    while _cleanups:
        fn = _cleanups.pop()
        with contextlib.suppress(Exception):
            fn()


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


atexit.register(_run_cleanups)
# SIGTERM normally kills Python without running atexit or finally blocks.
signal.signal(signal.SIGTERM, _raise_exit)


# -- broker ----------------------------------------------------------------------
@dataclass
class Broker:
    """The broker under test and what the report says about it."""

    bootstrap: str
    kafka_version: str
    pid: int | None  # the local broker's JVM, for its CPU; None for an external one
    stop: Callable[[], None]


def start_broker() -> Broker:
    """``KAFKA_BOOTSTRAP`` if set, else a fresh local JVM broker stopped at exit."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        return Broker(external, "external (see broker)", None, lambda: None)
    from weir.service.local_kafka import LocalKafka, kafka_version

    kafka = LocalKafka()
    on_exit(kafka.stop)
    bootstrap = kafka.start(timeout=120)
    return Broker(bootstrap, kafka_version(), kafka.pid, kafka.stop)


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})


def unique(prefix: str) -> str:
    """A fresh topic or group name, so runs never see each other's data or offsets."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(
    admin: AdminClient,
    names: Iterable[str],
    partitions: int,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create topics and wait until their leaders are known (clients race creation otherwise)."""
    names = list(names)
    futures = admin.create_topics(
        [NewTopic(n, partitions, 1, config=config or {}) for n in names],
        operation_timeout=timeout,
    )
    for future in futures.values():
        future.result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=timeout)
        ready = all(
            n in md.topics
            and md.topics[n].error is None
            and len(md.topics[n].partitions) == partitions
            and all(p.leader >= 0 for p in md.topics[n].partitions.values())
            for n in names
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise BenchmarkError(f"topics {names} not ready within {timeout:.0f}s")
        time.sleep(0.1)


def delete_topics(admin: AdminClient, names: Iterable[str], timeout: float = 30.0) -> None:
    """Best effort: keeps the broker's disk and page cache from growing run after run."""
    futures = admin.delete_topics(list(names), operation_timeout=timeout)
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(timeout=timeout)


# -- data ------------------------------------------------------------------------
def make_records(n: int, tags: int = 100, seed: int = 42) -> list[tuple[bytes, bytes]]:
    """``n`` (key, value) pairs: ``{"id": i, "v": float, "tag": "k<j>"}`` keyed by tag.

    Built once and reused for every run, so every contender sees identical input.
    """
    rng = random.Random(seed)
    dumps = orjson.dumps
    out = []
    for i in range(n):
        tag = f"k{i % tags}"
        value = dumps({"id": i, "v": rng.random() * 100.0, "tag": tag})
        # orjson's bytes keep their ~4 KB allocation: 500k of them would hold 2 GB
        # (measured with orjson 3.13), so keep a right-sized copy instead.
        out.append((tag.encode(), memoryview(value).tobytes()))
    return out


PREFILL_CONFIG = {
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "none",
    "acks": 1,
    "partitioner": "murmur2_random",  # Java's, like the processors'
    "queue.buffering.max.messages": 1_000_000,
}


def send(producer: Producer, topic: str, value: bytes, key: bytes | None, **fields: Any) -> None:
    """Produce one record, letting deliveries drain the local queue while it is full."""
    while True:
        try:
            producer.produce(topic, value, key, **fields)
            return
        except BufferError:
            producer.poll(0.05)


def prefill(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes] | tuple[bytes, bytes, int]],
    timeout: float = 120.0,
    config: dict[str, Any] | None = None,
) -> float:
    """Write ``records`` to ``topic`` as fast as one Python producer can; returns seconds.

    A record is (key, value) or (key, value, timestamp ms). Large linger and
    batches, no compression, leader-only acks (`PREFILL_CONFIG`, which ``config``
    overrides): the input only has to be there before the processor starts.
    """
    producer = Producer({**PREFILL_CONFIG, "bootstrap.servers": bootstrap, **(config or {})})
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err.str())

    started = time.monotonic()
    for record in records:
        timestamp = record[2] if len(record) > 2 else 0  # 0: the producer's clock
        send(producer, topic, record[1], record[0], timestamp=timestamp, on_delivery=on_delivery)
    left = producer.flush(timeout)
    if left or failures:
        raise BenchmarkError(
            f"prefill of {topic}: {left} records unsent, {len(failures)} failed ({failures[:1]})"
        )
    return time.monotonic() - started


# -- offsets -----------------------------------------------------------------------
class OffsetProbe:
    """Cheap completion checks: end offsets and a group's committed offsets.

    Polling offsets costs a few small requests, unlike consuming the output,
    so it barely competes with the processor for this machine's CPUs.
    """

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": unique("bench-probe"), "log_level": 3}
        )
        self._group_consumers: dict[str, Consumer] = {}

    def end_offsets(self, topic: str, partitions: int, timeout: float = 5.0) -> list[int]:
        """High watermarks (for a transactional topic these include commit markers)."""
        return [
            self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in range(partitions)
        ]

    def committed(self, group: str, topic: str, partitions: int, timeout: float = 5.0) -> int:
        """Sum of ``group``'s committed offsets on ``topic`` (0 for none)."""
        consumer = self._group_consumers.get(group)
        if consumer is None:
            consumer = Consumer(
                {"bootstrap.servers": self._bootstrap, "group.id": group, "log_level": 3}
            )
            self._group_consumers[group] = consumer
        tps = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=timeout
        )
        return sum(max(0, tp.offset) for tp in tps)

    def forget(self, group: str) -> None:
        consumer = self._group_consumers.pop(group, None)
        if consumer is not None:
            consumer.close()  # never subscribed: leaves no trace in the group

    def close(self) -> None:
        for group in list(self._group_consumers):
            self.forget(group)
        self._consumer.close()


# -- reading topics back ------------------------------------------------------------
class AppendSpan:
    """The first and last broker append time (ms) among the records noted."""

    def __init__(self) -> None:
        self.first, self.last = 0, 0

    def note(self, m: Message) -> None:
        ts = m.timestamp()[1]
        self.first = ts if not self.first else min(self.first, ts)
        self.last = max(self.last, ts)

    @property
    def seconds(self) -> float:
        """From the first to the last append (at least 1 ms: all at once is not 0 s)."""
        return max(1e-3, (self.last - self.first) / 1000)


@dataclass
class OutputScan:
    """What the output topic holds, read back after the run (read_committed)."""

    records: int
    distinct_ids: int
    appended: AppendSpan
    bad: int = 0  # records without the mapped field


def read_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    on_message: Callable[[Message], object],
    timeout: float = 120.0,
) -> int:
    """Read ``topic`` (read_committed) from the beginning to the end of every partition,
    handing each record to ``on_message``; returns how many there were.

    Stops early once ``on_message`` returns something truthy. Runs after the
    processor is stopped, so it costs the measurement nothing. Raises
    BenchmarkError on a consumer error or when ``timeout`` passes first.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("bench-scan"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    records = 0
    at_eof: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_eof) < partitions:
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"reading {topic} back: {records} records after {timeout:.0f}s"
                )
            for m in consumer.consume(10000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_eof.add(m.partition())
                        continue
                    raise BenchmarkError(f"reading {topic} back: {err.str()}")
                at_eof.discard(m.partition())
                records += 1
                if on_message(m):
                    return records
    finally:
        consumer.close()
    return records


def check_exactly_once(child: Child, exactly_once: bool, records: int, n: int) -> None:
    """An exactly-once run's output must hold exactly one record per input record."""
    if exactly_once and records != n:
        raise BenchmarkError(f"{child.name}: exactly-once output has {records}/{n}")


def scan_output(bootstrap: str, topic: str, partitions: int, timeout: float = 120.0) -> OutputScan:
    """Read the whole output: count, distinct ids, first and last append timestamp.

    Counting records (rather than offsets) is needed for transactional outputs,
    whose offsets include commit markers.
    """
    ids: set[int] = set()
    stamps = AppendSpan()
    bad = 0
    loads = orjson.loads

    def note(m: Message) -> None:
        nonlocal bad
        stamps.note(m)
        r = loads(m.value())
        ids.add(r["id"])
        if "x" not in r:
            bad += 1

    records = read_topic(bootstrap, topic, partitions, note, timeout)
    return OutputScan(records, len(ids), stamps, bad)


class Tail(threading.Thread):
    """Reads a topic as records arrive, on a thread, handing each record to
    ``on_message(received, message)`` with the wall-clock time its batch was received.

    read_committed by default (when a result becomes visible); ``committed=False``
    sees records when they are appended. From the beginning, or with ``from_end``
    only what arrives after the start. A short ``fetch.wait.max.ms`` keeps the
    receive times close to the moment records became readable.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_message: Callable[[float, Message], object],
        committed: bool = True,
        from_end: bool = False,
        fetch_wait_ms: int = 10,
    ) -> None:
        super().__init__(name=f"tail-{topic}", daemon=True)
        self.on_message = on_message
        self.count = 0
        self.last_at = 0.0  # monotonic time the last record arrived
        self.error: str | None = None
        self._stopping = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique("bench-tail"),
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if committed else "read_uncommitted",
                "fetch.wait.max.ms": fetch_wait_ms,  # read_committed fetches wait for the LSO
                "fetch.min.bytes": 1,
                "log_level": 3,
            }
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        start = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        if from_end:
            for tp in start:
                tp.offset = self.consumer.get_watermark_offsets(tp, timeout=10)[1]
        self.consumer.assign(start)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                msgs = self.consumer.consume(10000, 0.05)
                received = time.time()
                got = 0
                for m in msgs:
                    if m.error() is None:
                        self.on_message(received, m)
                        got += 1
                if got:
                    self.count += got
                    self.last_at = time.monotonic()
        except Exception as exc:  # reported by the caller
            self.error = repr(exc)
        finally:
            self.consumer.close()

    def wait_count(self, n: int, timeout: float) -> float | None:
        """Monotonic time when ``n`` records had been seen, or None on timeout."""
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline or not self.is_alive():
                return None
            time.sleep(0.02)
        return self.last_at

    def stop(self) -> None:
        """Stop reading (the consumer closes); also for a tail that never started."""
        self._stopping.set()
        if self.ident is None:
            self.consumer.close()
        else:
            self.join(10)


# -- CPU accounting ----------------------------------------------------------------
def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of all threads of ``pid`` so far (0.0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a ``--processes`` supervisor's workers)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used since boot (not idle/iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU used so far by the processor, the broker, this script and the whole machine.

    The difference of two snapshots shows what else ran during a measurement:
    on a shared machine, other processes' load skews every number.
    """

    at: float
    child: float
    broker: float
    me: float
    machine: float

    @staticmethod
    def take(child_pid: int, broker_pid: int | None) -> CpuSnapshot:
        return CpuSnapshot(
            time.monotonic(),
            process_cpu_seconds(child_pid),
            process_cpu_seconds(broker_pid) if broker_pid else 0.0,
            time.process_time(),
            machine_busy_seconds(),
        )

    def until(self, later: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per party between two snapshots, ``other``: everyone else, and
        ``other_cores``: the cores everyone else used on average."""
        child = later.child - self.child
        broker = later.broker - self.broker
        me = later.me - self.me
        machine = later.machine - self.machine
        wall = later.at - self.at
        other = max(0.0, machine - child - broker - me)
        return {
            "wall": wall,
            "child": child,
            "broker": broker,
            "benchmark": me,
            "other": other,
            "other_cores": other / max(wall, 1e-3),
        }


def cpu_figures(cpu: dict[str, float], records: int) -> dict[str, Any]:
    """A measured stretch's CPU figures (``cpu`` from `CpuSnapshot.until`): the
    processor's CPU seconds per million of the ``records`` it processed meanwhile (None
    when the stretch was too short to measure), every party's CPU seconds, and the
    cores other processes used (anything above ~0.1 means disturbed numbers)."""
    return {
        "cpu_s_per_million": cpu["child"] / records * 1e6 if cpu["wall"] > 0.05 else None,
        "cpu_s": cpu,
        "other_load_cores": cpu["other_cores"],
    }


# -- child processes ---------------------------------------------------------------
class Child:
    """A processor under test in its own process; CPU and RSS come from /proc/PID.

    The command must exec Python directly (no shell), so that ``pid`` is the
    process that does the work and /proc reports its threads' CPU, not a shell's.
    """

    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        http_port: int = 0,
        root: Path = ROOT,
    ) -> None:
        """``root``: the checkout whose code runs (another one to compare with)."""
        TMP.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.http_port = http_port
        # Unique per invocation: several benchmarks may run at once on a shared machine.
        self.log_path = TMP / f"{name}.{os.getpid()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for the benchmark is handled by it alone
        )
        self.started = time.monotonic()
        self.rusage: Any = None
        on_exit(self.kill)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_running(self) -> None:
        """Raise BenchmarkError if the process has exited."""
        if not self.alive():
            raise self._exited(self.proc.returncode)

    def check_exit(self, code: int) -> None:
        """Raise BenchmarkError unless ``code``, its exit code, says it stopped cleanly."""
        if code != 0:
            raise self._exited(code)

    def _exited(self, code: int) -> BenchmarkError:
        return BenchmarkError(f"{self.name} exited with {code}: {self.tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU of all the process's threads so far."""
        return process_cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        """VmHWM: the resident set's high-water mark since the process started."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def status(self, timeout: float = 2.0, port: int = 0) -> dict[str, Any] | None:
        """The Weir worker's /status JSON (of the process serving ``port``, default its
        own), or None (no HTTP port, not up yet)."""
        port = port or self.http_port
        if not port:
            return None
        try:
            url = f"http://127.0.0.1:{port}/status"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return orjson.loads(resp.read())
        except (OSError, ValueError):
            return None

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (a clean stop commits); SIGKILL after ``timeout``."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            code = self._wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        self._log.close()
        return code

    def _wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped by Popen.poll()
                pid = 0
            if pid:
                self.rusage = rusage
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return self.proc.returncode
            if self.proc.returncode is not None:
                return self.proc.returncode
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.proc.args, timeout)
            time.sleep(0.05)

    def discard_log(self) -> None:
        """Forget the log of a run that went well; failed runs keep theirs for a post-mortem."""
        with contextlib.suppress(OSError):
            self._log.close()
            self.log_path.unlink()

    def kill(self) -> None:
        """SIGKILL the process and everything it started (its own session's group: a
        ``--processes`` supervisor's children die with it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        with contextlib.suppress(Exception):
            self._log.close()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    check: Callable[[], object] | None = None,
    every: float = 0.1,
) -> Any:
    """`tests.waiting.wait_for`, failing with a BenchmarkError (a failed row, recorded)."""
    try:
        return wait_for(predicate, timeout, what, check=check, every=every)
    except AssertionError as exc:
        raise BenchmarkError(str(exc)) from None


@dataclass
class Progress:
    """When the processor's output started and was complete, with CPU snapshots at both."""

    first: CpuSnapshot
    done: CpuSnapshot
    peak_rss_mb: float


def wait_for_output(
    child: Child,
    probe: OffsetProbe,
    *,
    output: str,
    partitions: int,
    expected: int,
    committed_check: tuple[str, str] | None = None,
    broker_pid: int | None = None,
    timeout: float = 300.0,
    interval: float = 0.05,
) -> Progress:
    """Poll until the output holds ``expected`` records; bounded by ``timeout``.

    Done means: the output's end offsets add up to ``expected`` and, with
    ``committed_check=(group, input_topic)``, the group has committed all of
    its input. A transactional output needs the latter, since its end offsets
    also count commit markers and open transactions; there the committed input
    is the moment the outputs become visible. Polls quickly until the first
    output (the CPU snapshot there starts the measured stretch), then slower.
    """
    deadline = time.monotonic() + timeout
    first: CpuSnapshot | None = None
    out = 0
    while True:
        child.check_running()
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"{child.name}: output has {out}/{expected} records after {timeout:.0f}s"
            )
        try:
            out = sum(probe.end_offsets(output, partitions))
        except KafkaException:
            time.sleep(interval)
            continue
        if out > 0 and first is None:
            first = CpuSnapshot.take(child.pid, broker_pid)
        done = out >= expected
        if done and committed_check is not None:
            group, input_topic = committed_check
            done = probe.committed(group, input_topic, partitions) >= expected
        if done:
            last = CpuSnapshot.take(child.pid, broker_pid)
            return Progress(first or last, last, child.peak_rss_mb())
        time.sleep(interval if first is None else 4 * interval)


# -- statistics --------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linearly interpolated between the two nearest
    ranks (numpy's default; ``percentile(v, 50) == median(v)``); NaN without values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- runs ----------------------------------------------------------------------------
def row_arguments(p: argparse.ArgumentParser, rows: Sequence[Any]) -> None:
    """The flags of a benchmark that measures ``rows`` (each with a ``name``) in
    repeats: ``--runs``, ``--partitions``, ``--rows`` (see `select_rows`), ``--no-write``."""
    names = [r.name for r in rows]
    p.add_argument("--runs", type=int, default=3, help="repeats per row; the median is reported")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--rows", default=",".join(names), help=f"comma-separated subset of {names}")
    p.add_argument(
        "--no-write", action="store_true", help="print only; leave benchmarks/results alone"
    )


def select_rows(p: argparse.ArgumentParser, args: argparse.Namespace, rows: Sequence[Any]) -> None:
    """``args.selected``: the rows ``--rows`` names, in their usual order; an unknown
    name (or none) is a usage error."""
    wanted = [w.strip() for w in args.rows.split(",") if w.strip()]
    names = [r.name for r in rows]
    unknown = [w for w in wanted if w not in names]
    if unknown or not wanted:
        p.error(f"--rows: unknown {unknown}; choose from {names}")
    args.selected = [r for r in rows if r.name in wanted]


def check_load() -> float:
    """The load average now; warns when other work will make the results noisy."""
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.1f} before starting; results will be noisy")
    return load


def run_rows(
    rows: Sequence[Any],
    repeats: int,
    run_one: Callable[[Any, int], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """Every row once per repeat, rows interleaved (so slow drift - page cache, JIT,
    thermal - spreads over all rows instead of favouring the first); prints each
    result with ``describe``. A run that raises BenchmarkError is kept as
    ``{"row", "run", "error"}`` and the others go on."""
    runs: list[dict[str, Any]] = []
    for run in range(1, repeats + 1):
        for row in rows:
            print(f"run {run}/{repeats} {row.label}: ", end="", flush=True)
            try:
                result = run_one(row, run)
            except BenchmarkError as exc:
                print(f"FAILED: {exc}", flush=True)
                runs.append({"row": row.name, "run": run, "error": str(exc)})
                continue
            runs.append(result)
            print(describe(result), flush=True)
    return runs


def run_figures(r: dict[str, Any], *extra: str) -> str:
    """A throughput run's progress line: records/s, CPU s per million records, peak
    RSS, then a benchmark's ``extra`` figures, and the other load on the machine."""
    return ", ".join(
        [
            f"{r['records_per_s']:,.0f} records/s",
            f"{r['cpu_s_per_million'] or float('nan'):.1f} CPU s/1M",
            f"{r['peak_rss_mb']:.0f} MB",
            *extra,
            f"other load {r['other_load_cores']:.2f} cores",
        ]
    )


def summary_of(row: Any, runs: list[dict[str, Any]], *fields: str) -> dict[str, Any]:
    """A row's summary over its runs: name, label, how many succeeded (and the errors
    of the others), every successful run's records/s, and the median of each of
    ``fields`` over the runs that have a value for it."""
    mine = [r for r in runs if r["row"] == row.name]
    ok = [r for r in mine if "error" not in r]
    return {
        "row": row.name,
        "label": row.label,
        "runs": len(ok),
        "failed": [r["error"] for r in mine if "error" in r],
        "records_per_s_all": [round(r["records_per_s"]) for r in ok],
        **{f: median([r[f] for r in ok if r.get(f) is not None]) for f in fields},
    }


def result_rows(
    items: list[dict[str, Any]],
    headers: Sequence[str],
    cells: Callable[[dict[str, Any]], list[str]],
    name: Callable[[dict[str, Any]], str],
) -> list[list[str]]:
    """The rows of a results table: ``cells(item)``, or for an item that failed (it has
    an ``error``, or no successful ``runs``) its ``name(item)`` and "failed"."""
    return [
        [name(x), "failed", *["-"] * (len(headers) - 2)]
        if "error" in x or x.get("runs") == 0
        else cells(x)
        for x in items
    ]


def open_run(module: str, args: argparse.Namespace) -> tuple[Broker, dict[str, Any]]:
    """The start of a benchmark: warn about load, start the broker, print the header.

    Returns the broker and the start of the report's JSON: machine, command, load
    average at the start, code version and configuration.
    """
    load = check_load()
    broker = start_broker()
    info = machine_info(broker.kafka_version)
    print(f"{machine_header(info)}\nbroker {broker.bootstrap}", flush=True)
    return broker, {
        "machine": info,
        "command": command_line(module),
        "loadavg_start": load,
        "code": code_version(),
        "config": {k: v for k, v in vars(args).items() if k not in ("selected", "no_write")},
    }


# -- reporting ---------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def code_version(root: Path = ROOT) -> dict[str, Any]:
    """The commit measured in the checkout at ``root`` (this one by default), its
    subject, and whether Weir's packages differ from it (other work may be changing the
    tree while a benchmark runs)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "subject": git("log", "-1", "--format=%s"),
        "weir_dirty": bool(git("status", "--porcelain", "--", "weir")),
    }


def machine_info(kafka_version: str) -> dict[str, Any]:
    """What the numbers depend on, for the report header."""
    mem_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gb": round(mem_gb, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": librdkafka_version()[0],
        "orjson": orjson.__version__,
        "kafka": kafka_version,
        "weir": _revision(code_version()),
    }


def _revision(code: dict[str, Any]) -> str:
    return f"{code['commit']}+dirty" if code["weir_dirty"] else code["commit"]


def machine_header(info: dict[str, Any]) -> str:
    """One line for a report: when, on what machine, with which versions."""
    return (
        f"{info['date']} · {info['nproc']} CPUs ({info['cpu']}) · {info['memory_gb']} GB"
        f" · Linux {info['kernel']} · Python {info['python']} · confluent-kafka"
        f" {info['confluent_kafka']} (librdkafka {info['librdkafka']}) · orjson"
        f" {info['orjson']} · Kafka {info['kafka']} · Weir {info['weir']}"
    )


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """How a benchmark was started (``argv``: its arguments, default this process's)."""
    return " ".join([f".venv/bin/python -m {module}", *(sys.argv[1:] if argv is None else argv)])


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool) -> str:
    """A plain-text or Markdown table; numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)

    out = [line(headers)]
    if markdown:
        out.append(
            "|"
            + "|".join(
                ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                for w, num in zip(widths, numeric, strict=True)
            )
            + "|"
        )
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%x"))
    except ValueError:
        return text in ("", "-")
    return True


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def write_report(stem: Path, data: Any, markdown: str) -> None:
    """``<stem>.json`` (every figure, for later re-rendering) and ``<stem>.md`` (the report)."""
    write_json(stem.with_suffix(".json"), data)
    stem.with_suffix(".md").write_text(markdown)
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


def baseline_line(code: dict[str, Any] | None) -> str:
    """How a report names the checkout it was compared with: by commit, not by where it
    happened to be on the machine that ran it."""
    if code is None:
        return ""
    dirty = ", its Weir packages modified" if code["weir_dirty"] else ""
    return f"Baseline: a separate checkout at commit {code['commit']} ({code['subject']}){dirty}."
