"""Helpers shared by the keyed-state and event-time benchmarks (`state.py`, `windows.py`;
`elasticity.py` reads metrics with them too).

Everything generic (broker, topics, pre-filling, reading topics back, child
processes, CPU snapshots, waiting, tables, reports) comes from `benchmarks.common`;
this module adds what stateful jobs need on top: reading a worker's Prometheus
metrics (counters and histogram quantiles), waiting for ``/ready`` and for the
input to be processed and committed, the size of a state directory on disk, a
process's current RSS, and profiling a worker with py-spy (with a summary of the
hottest functions), and the end of a report that carries profiles.
"""

from __future__ import annotations

import argparse
import contextlib
import linecache
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    TMP,
    BenchmarkError,
    Child,
    CpuSnapshot,
    OffsetProbe,
    wait_until,
    write_report,
)

PY_SPY = ROOT / ".venv" / "bin" / "py-spy"


# -- HTTP ------------------------------------------------------------------------
def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET on the worker's HTTP port; (0, b"") if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


def wait_ready(child: Child, timeout: float) -> float:
    """Poll ``/ready`` until 200; returns the monotonic time it answered so."""
    wait_until(
        lambda: http_get(child.http_port, "/ready", timeout=1.0)[0] == 200,
        timeout,
        f"{child.name} to be ready",
        check=child.check_running,
        every=0.05,
    )
    return time.monotonic()


# -- Prometheus metrics --------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Metrics = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Metrics:
    """Prometheus text format → {sample name: [(labels, value), ...]}."""
    out: Metrics = defaultdict(list)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        with contextlib.suppress(ValueError):
            out[m.group(1)].append((labels, float(m.group(3))))
    return dict(out)


def fetch_metrics(port: int) -> Metrics:
    code, body = http_get(port, "/metrics", timeout=5.0)
    return parse_metrics(body.decode(errors="replace")) if code == 200 else {}


def metric_sum(metrics: Metrics, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for lab, v in metrics.get(name, [])
        if all(lab.get(k) == want for k, want in labels.items())
    )


def histogram_quantile(metrics: Metrics, name: str, q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket
    (an estimate: its precision is the bucket layout). None without observations."""
    buckets: dict[float, float] = defaultdict(float)
    for lab, v in metrics.get(f"{name}_bucket", []):
        buckets[float(lab["le"])] += v
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if b == float("inf"):
                return lower_bound  # beyond the largest finite bucket
            if count == lower_count:
                return b
            return lower_bound + (b - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = b, count
    return bounds[-1]


# -- process and disk --------------------------------------------------------------------
def vm_status_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of ``pid`` in MB; {} if it is gone."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) / 1024
    return out


def dir_size(path: Path) -> dict[str, Any]:
    """Apparent bytes, allocated bytes (what ``du`` reports) and file count under ``path``."""
    apparent = allocated = files = 0
    by_kind: Counter[str] = Counter()
    for root, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(root, name))
                apparent += st.st_size
                allocated += st.st_blocks * 512
                files += 1
                suffix = name.rsplit(".", 1)[-1] if "." in name else name.rstrip("0123456789-")
                by_kind[suffix] += st.st_size
    return {
        "apparent_bytes": apparent,
        "du_bytes": allocated,
        "files": files,
        "by_kind": dict(by_kind.most_common(6)),
    }


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- py-spy ----------------------------------------------------------------------------------
@dataclass
class Profile:
    path: Path
    seconds: float
    samples: int  # every sampled stack (py-spy without --idle: threads it saw as active)
    running: int  # samples not in a blocking call (see `is_waiting`)
    threads: dict[str, dict[str, float]]  # thread -> running / waiting share of all samples
    top_self: list[dict[str, Any]]  # hottest functions by own time, running samples
    top_total: list[dict[str, Any]]  # hottest Weir functions by inclusive time, running
    waiting: list[dict[str, Any]]  # where the waiting samples were

    def as_dict(self) -> dict[str, Any]:
        path = self.path
        return {
            "path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "seconds": self.seconds,
            "samples": self.samples,
            "running": self.running,
            "threads": self.threads,
            "top_self": self.top_self,
            "top_total": self.top_total,
            "waiting": self.waiting,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Profile:
        return Profile(
            Path(d["path"]), d["seconds"], d["samples"], d["running"], d["threads"],
            d["top_self"], d["top_total"], d["waiting"],
        )  # fmt: skip


def pyspy_record(pid: int, seconds: float, out: Path, gil: bool = False) -> Path | None:
    """``py-spy record -d S -f raw --threads [--gil]`` on ``pid``; None if py-spy failed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(PY_SPY), "record", "-d", str(int(seconds)), "-f", "raw", "--threads",
        *(["--gil"] if gil else []), "-o", str(out), "--pid", str(pid),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"py-spy failed: {exc}")
        return None
    if proc.returncode != 0 or not out.exists():
        print(f"py-spy failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        return None
    return out


_FRAME = re.compile(r"^(.*) \((.*):(\d+)\)$")

# py-spy without --idle still samples threads blocked in C calls that it cannot
# tell from running ones (librdkafka's consume, a queue's get): such a sample's
# leaf is the Python line making the call. These patterns mark a leaf as waiting.
_WAIT_FUNCTIONS = {"wait", "select", "sleep", "accept", "readinto", "get", "_wait_for_tstate_lock"}
_WAIT_CALLS = re.compile(
    r"\.consume\(|sleep\(|\.flush\(|_transaction\(|\.result\(|\.wait\(|"
    r"tasks\.get\(|acks\.get\(|inbox\.get\(|\.poll\(0\.|\.poll\(timeout|"
    r"\.list_offsets\(|\.join\(|\.committed\(|get_watermark_offsets\("
)


def _short(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(ROOT))
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    return Path(path).name


def is_waiting(function: str, path: str, lineno: int) -> bool:
    """Is a sample whose innermost Python frame is this one blocked rather than running?"""
    stdlib = "site-packages" not in path and not _short(path).startswith(
        ("weir/service/", "weir/operators/", "weir/state/", "benchmarks/")
    )
    if stdlib and function.rsplit(".", 1)[-1] in _WAIT_FUNCTIONS:
        return True
    return bool(_WAIT_CALLS.search(linecache.getline(path, lineno)))


def summarize_pyspy(path: Path, seconds: float, top: int = 15) -> Profile:
    """Top functions by self time (any code) and inclusive time (Weir's code), over
    the samples that were running; and where the waiting samples waited.

    A raw py-spy line is ``thread (tid): name;frame;frame;... count`` with frames
    ``function (file:line)``; the last frame is where the sample was taken.
    """
    self_fn: Counter[tuple[str, str]] = Counter()
    self_line: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)
    total_fn: Counter[tuple[str, str]] = Counter()
    waits: Counter[str] = Counter()
    threads: dict[str, Counter[str]] = defaultdict(Counter)
    samples = running = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        thread = re.sub(r"-\d+$", "-N", thread) if thread.startswith("weir-slot") else thread
        parsed = []
        for f in frames[1:]:
            m = _FRAME.match(f)
            if m is not None:
                parsed.append((m.group(1), m.group(2), int(m.group(3))))
        if not parsed:
            continue
        samples += count
        fn, file, lineno = parsed[-1]
        if is_waiting(fn, file, lineno):
            threads[thread]["waiting"] += count
            waits[f"{fn} ({_short(file)}:{lineno})"] += count
            continue
        running += count
        threads[thread]["running"] += count
        short = _short(file)
        self_fn[(fn, short)] += count
        self_line[(fn, short)][lineno] += count
        for key in {(f, _short(p)) for f, p, _ in parsed}:
            total_fn[key] += count
    weir = ("weir/service/", "weir/operators/", "weir/state/")
    skip = {"run", "_bootstrap", "_bootstrap_inner", "<module>", "main", "_cmd_run"}
    per = max(1, running)
    return Profile(
        path=path,
        seconds=seconds,
        samples=samples,
        running=running,
        threads={
            t: {k: round(v / max(1, samples), 3) for k, v in c.items()}
            for t, c in sorted(threads.items(), key=lambda x: -x[1]["running"])
        },
        top_self=[
            {
                "function": fn,
                "where": f"{file}:{self_line[(fn, file)].most_common(1)[0][0]}",
                "share": round(c / per, 3),
            }
            for (fn, file), c in self_fn.most_common(top)
        ],
        top_total=[
            {"function": fn, "file": file, "share": round(c / per, 3)}
            for (fn, file), c in total_fn.most_common()
            if file.startswith(weir) and fn not in skip
        ][:top],
        waiting=[
            {"where": w, "share": round(c / max(1, samples), 3)} for w, c in waits.most_common(6)
        ],
    )


def profile_worker(
    child: Child,
    seconds: float,
    name: str,
    busy: Callable[[], bool] | None = None,
    modes: tuple[str, ...] = ("all", "gil"),
) -> dict[str, Any]:
    """Profile a running worker: ``seconds`` of every active thread, then, if ``busy()``
    says it is still working, ``seconds`` more of only the thread holding the GIL (the
    Python code that keeps the others waiting). Raw files go to results/tmp.

    Returns {"all": Profile dict, "gil": Profile dict} (either may be missing).
    """
    out: dict[str, Any] = {}
    for i, mode in enumerate(modes):
        if i > 0 and busy is not None and not busy():
            print(f"  ({child.name} finished before the --gil profile; skipped)")
            break
        path = TMP / f"profile-{name}-{mode}.{os.getpid()}.txt"
        if pyspy_record(child.pid, seconds, path, gil=mode == "gil") is not None:
            out[mode] = summarize_pyspy(path, seconds).as_dict()
    return out


def profile_md(profiles: dict[str, Any], n: int = 10) -> list[str]:
    """Markdown for the result of `profile_worker`."""
    lines: list[str] = []
    for mode, title in (
        ("all", "every active thread (`py-spy record -d S -f raw --threads`)"),
        ("gil", "only the thread holding the GIL (`--gil`)"),
    ):
        d = profiles.get(mode)
        if d:
            lines += [f"*{title}*, {d['seconds']:g} s, raw file `{d['path']}`:", ""]
            lines += [*profile_lines(Profile.from_dict(d), n), ""]
    return lines


def close_report(
    result: dict[str, Any],
    started: float,
    stem: Path | None,
    markdown: Callable[[dict[str, Any], argparse.Namespace], str],
    args: argparse.Namespace,
) -> None:
    """The end of a benchmark with profiles: print them and the elapsed time, then write
    the report (`benchmarks.common.write_report`) to ``stem`` unless it is None."""
    for name, prof in result["profiles"].items():
        if prof:
            print(f"\nprofile: {name}")
            print("\n".join(profile_md(prof)))
    result["elapsed_s"] = time.monotonic() - started
    print(f"\nelapsed {result['elapsed_s']:.0f} s")
    if stem is not None:
        write_report(stem, result, markdown(result, args))


def profile_lines(profile: Profile, n: int = 10) -> list[str]:
    """Markdown lines describing a profile."""
    rate = profile.samples / max(1e-3, profile.seconds)
    threads = ", ".join(
        f"{t} {v.get('running', 0):.0%} running + {v.get('waiting', 0):.0%} waiting"
        for t, v in list(profile.threads.items())[:5]
    )
    lines = [
        f"{profile.samples} samples ({rate:.0f}/s; py-spy samples each active thread 100"
        f" times a second), {profile.running} of them running Python code, the rest blocked"
        f" in librdkafka, queues or sleeps. By thread (share of all samples): {threads}.",
        "",
        "Self time (share of running samples; file:line is the hottest line):",
        "",
    ]
    lines += [f"- {p['share']:.1%} `{p['function']}` ({p['where']})" for p in profile.top_self[:n]]
    lines += ["", "Inclusive time, Weir functions (share of running samples):", ""]
    lines += [f"- {p['share']:.1%} `{p['function']}` ({p['file']})" for p in profile.top_total[:n]]
    lines += ["", "Waiting (share of all samples):", ""]
    lines += [f"- {p['share']:.1%} {p['where']}" for p in profile.waiting]
    return lines


# -- processing progress from /status ---------------------------------------------------
@dataclass
class Processing:
    """How fast the worker's slots processed the pre-filled input, from ``/status``.

    The slots' ``records`` counters are polled every ``interval``; the rate is taken
    from the first poll that saw records processed to the (interpolated) moment
    the count reached N, so start-up and the group join are excluded, and so is
    anything after the last record was processed (the last commit, which with
    exactly-once is what makes held results visible).
    """

    t_first: float  # monotonic time of the first poll with records processed
    p_first: int  # records processed by then
    t_done: float  # interpolated time the count reached N
    first: CpuSnapshot
    done: CpuSnapshot
    peak_rss_mb: float
    samples: list[tuple[float, int]]

    def rate(self, n: int) -> float:
        return (n - self.p_first) / max(1e-3, self.t_done - self.t_first)


def processed(child: Child) -> int | None:
    status = child.status(timeout=2.0)
    if not status:
        return None
    return sum(s["records"] for s in status["slots"])


def watch_processing(
    child: Child,
    n: int,
    broker_pid: int | None,
    timeout: float,
    interval: float = 0.1,
    then: tuple[int, Callable[[], None]] | None = None,
) -> Processing:
    """Poll ``/status`` until the slots have processed ``n`` records; ``then``: once
    they have processed that many, call that (once)."""
    deadline = time.monotonic() + timeout
    samples: list[tuple[float, int]] = []
    first: CpuSnapshot | None = None
    t_first, p_first = 0.0, 0
    while True:
        child.check_running()
        if time.monotonic() > deadline:
            got = samples[-1][1] if samples else 0
            raise BenchmarkError(f"{child.name}: processed {got}/{n} records after {timeout:.0f}s")
        count = processed(child)
        now = time.monotonic()
        if count is not None:
            samples.append((now, count))
            if then is not None and count >= then[0]:
                then[1]()
                then = None
            if count > 0 and first is None:
                first = CpuSnapshot.take(child.pid, broker_pid)
                t_first, p_first = now, count
            if count >= n:
                done = CpuSnapshot.take(child.pid, broker_pid)
                t_done = now
                if len(samples) >= 2 and samples[-2][1] < n and samples[-2][0] >= t_first:
                    (t0, c0), (t1, c1) = samples[-2], samples[-1]
                    t_done = t0 + (t1 - t0) * (n - c0) / max(1, c1 - c0)
                if first is None or t_done <= t_first:  # all of it between two polls
                    first = first or done
                    t_first, p_first = (
                        (samples[-2][0], samples[-2][1])
                        if len(samples) > 1
                        else (
                            child.started,
                            0,
                        )
                    )
                return Processing(
                    t_first, p_first, t_done, first, done, child.peak_rss_mb(), samples
                )
        time.sleep(interval)


def profile_run(
    child: Child,
    probe: OffsetProbe,
    group: str,
    topic: str,
    n: int,
    args: argparse.Namespace,
    name: str,
) -> dict[str, Any]:
    """An unmeasured run, profiled: once the slots have processed something,
    `profile_worker` while they still have work; then wait until all ``n`` input
    records are committed and stop the worker. Returns the profiles."""
    wait_until(
        lambda: processed(child),
        args.timeout,
        f"{child.name} to process something to profile",
        check=child.check_running,
        every=0.05,
    )
    prof = profile_worker(
        child, args.profile_seconds, name, busy=lambda: (processed(child) or 0) < n
    )
    wait_committed(child, probe, group, topic, args.partitions, n, args.timeout * 3)
    child.stop()
    child.discard_log()
    return prof


def wait_committed(
    child: Child,
    probe: OffsetProbe,
    group: str,
    topic: str,
    partitions: int,
    n: int,
    timeout: float,
) -> float:
    """Wait until ``group`` has committed ``n`` input offsets; returns when (monotonic)."""
    wait_until(
        lambda: probe.committed(group, topic, partitions) >= n,
        timeout,
        f"{child.name}'s input all committed",
        check=child.check_running,
        every=0.05,
    )
    return time.monotonic()


def stop_when_processed(
    child: Child,
    probe: OffsetProbe,
    group: str,
    topic: str,
    partitions: int,
    n: int,
    timeout: float,
) -> tuple[float, int]:
    """SIGTERM the worker now (a clean stop checkpoints at once: the last epoch's state
    goes to the changelog and RocksDB and everything commits, with no wait for the next
    interval); returns (monotonic time the group's committed offsets reached ``n``,
    exit code)."""
    with contextlib.suppress(ProcessLookupError):
        child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    committed_at = None
    while committed_at is None and time.monotonic() < deadline:
        try:
            if probe.committed(group, topic, partitions, timeout=2.0) >= n:
                committed_at = time.monotonic()
                break
        except Exception:  # the broker is busy; try again
            pass
        if not child.alive() and probe.committed(group, topic, partitions) < n:
            break
        time.sleep(0.02)
    code = child.stop(timeout=max(1.0, deadline - time.monotonic()))
    if committed_at is None:
        raise BenchmarkError(f"{child.name}: input not all committed at stop: {child.tail()}")
    return committed_at, code
