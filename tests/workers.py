"""Running workers in tests: as subprocesses (for kill -9) or as threads (fast), and
reading what they report over HTTP (/status, /metrics).

Test job files under tests/jobs/ read their topic names and knobs from
``WEIR_TEST_*`` environment variables, so one file serves many tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from tests.ports import consecutive_free_ports, free_port
from tests.waiting import wait_for
from weir.service.config import WorkerConfig
from weir.service.jobfile import load_job
from weir.service.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
JOBS = Path(__file__).resolve().parent / "jobs"


def job_env(**values: Any) -> dict[str, str]:
    """``WEIR_TEST_<NAME>`` variables for a test job."""
    return {f"WEIR_TEST_{k.rstrip('_').upper()}": str(v) for k, v in values.items()}


# -- what a worker reports over HTTP ------------------------------------------------------


def status_at(port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """The /status of the worker (process) serving ``port``; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except OSError:
        return None


def history_at(port: int, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The samples of the status page's history (/history), oldest first; [] if the
    worker does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/history", timeout=timeout) as resp:
            return orjson.loads(resp.read())["samples"]
    except OSError:
        return []


def metrics_at(port: int, timeout: float = 2.0) -> str:
    """The /metrics text of the worker (process) serving ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return resp.read().decode()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` in a Prometheus text exposition whose labels
    include ``labels`` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m[1] != name:
            continue
        found = dict(_LABEL.findall(m[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m[3])
    return total


def split_tp(item: str) -> tuple[str, int]:
    """``"<topic>-<partition>"`` (as /status lists partitions) -> (topic, partition)."""
    topic, _, p = item.rpartition("-")
    return topic, int(p)


def partition_numbers(items: list[str]) -> set[int]:
    """The partition numbers in a /status list (of one topic)."""
    return {split_tp(item)[1] for item in items}


# -- workers in subprocesses ---------------------------------------------------------------


class WorkerProcess:
    """``weir run`` in a subprocess, with its HTTP port on for /status.

    With ``processes`` > 1 it runs ``--processes N``: process ``i`` serves HTTP on
    ``ports[i]`` (consecutive ports from ``http_port``).
    """

    def __init__(
        self,
        job: str,
        bootstrap: str,
        group: str,
        worker_id: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        processes: int = 1,
    ) -> None:
        self.http_port = consecutive_free_ports(processes) if processes > 1 else free_port()
        self.ports = [self.http_port + i for i in range(processes)]
        self.log_path = log_dir / f"{worker_id}.log"
        extra = ["--processes", str(processes)] if processes > 1 else []
        cmd = [
            sys.executable, "-m", "weir.service.cli", "run", str(JOBS / job),
            "--bootstrap", bootstrap, "--group", group, "--worker-id", worker_id,
            "--http-port", str(self.http_port), *extra, *(args or []),
        ]  # fmt: skip
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        return status_at(self.http_port, timeout)

    def metrics(self, timeout: float = 2.0) -> str:
        return metrics_at(self.http_port, timeout)

    def history(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        return history_at(self.http_port, timeout)

    def check_alive(self) -> None:
        """Fail if the process has exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_tail(40)}")

    def wait_running(self, timeout: float = 60.0, partitions: bool = True) -> dict[str, Any]:
        """Until /status says running (with partitions assigned, if asked)."""

        def running() -> dict[str, Any] | None:
            st = self.status()
            ok = st and st["state"] == "running" and (st["partitions"] or not partitions)
            return st if ok else None

        return wait_for(
            running,
            timeout,
            "the worker running",
            every=0.1,
            check=self.check_alive,
            detail=lambda: f": {self.log_tail()}",
        )

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"worker did not exit within {timeout}s: {self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class Workers:
    """The worker processes of one group, running ``job``. Each incarnation of a worker
    id logs to its own directory (so its restore lines can be told apart); an exit the
    test did not cause fails it (`check_alive`)."""

    def __init__(
        self,
        job: str,
        bootstrap: str,
        group: str,
        env: dict[str, str],
        args: list[str],
        logs: Path,
    ) -> None:
        self.job, self.bootstrap, self.group, self.env, self.args, self.logs = (
            job, bootstrap, group, env, args, logs,
        )  # fmt: skip
        self.live: dict[str, WorkerProcess] = {}
        self.all: list[WorkerProcess] = []
        self.incarnations: Counter[str] = Counter()

    def start(
        self,
        worker_id: str,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        processes: int = 1,
    ) -> WorkerProcess:
        """A new incarnation of ``worker_id``, with extra ``args`` and ``env``."""
        self.incarnations[worker_id] += 1
        log_dir = self.logs / f"{worker_id}.{self.incarnations[worker_id]}"
        log_dir.mkdir(parents=True)
        worker = WorkerProcess(
            self.job, self.bootstrap, self.group, worker_id, log_dir,
            env={**self.env, **(env or {})}, args=[*self.args, *(args or [])],
            processes=processes,
        )  # fmt: skip
        self.live[worker_id] = worker
        self.all.append(worker)
        return worker

    def kill(self, worker_id: str) -> None:
        self.live.pop(worker_id).kill()

    def forget(self, worker_id: str) -> WorkerProcess:
        """Stop watching a worker whose exit the test expects."""
        return self.live.pop(worker_id)

    def stop(self, worker_id: str, timeout: float = 60.0) -> None:
        """SIGTERM one worker; it must stop cleanly (exit 0)."""
        worker = self.live.pop(worker_id)
        code = worker.terminate(timeout)
        assert code == 0, f"{worker_id} exited {code} on SIGTERM:\n{worker.log_tail(40)}"

    def check_alive(self) -> None:
        for worker_id, worker in self.live.items():
            if worker.proc.poll() is not None:
                raise AssertionError(
                    f"worker {worker_id} exited {worker.proc.returncode} on its own:\n"
                    f"{worker.log_tail(40)}"
                )

    def stop_all(self, timeout: float = 60.0) -> None:
        """SIGTERM every live worker; each must stop cleanly (exit 0)."""
        for worker in self.live.values():
            worker.proc.send_signal(signal.SIGTERM)
        for worker_id, worker in list(self.live.items()):
            code = worker.wait(timeout)
            assert code == 0, f"{worker_id} exited {code}:\n{worker.log_tail(40)}"
        self.live.clear()

    def logs_tail(self, lines: int = 25) -> str:
        """The last ``lines`` of every incarnation's log, for failure messages."""
        return "".join(f"\n--- {w.log_path}\n{w.log_tail(lines)}" for w in self.all)

    def close(self) -> None:
        for worker in self.all:
            worker.close()


# -- workers on threads --------------------------------------------------------------------


class WorkerThread:
    """A `Worker` on a thread of the test process: quick to start, easy to inspect.

    ``config`` holds `WorkerConfig` fields; the group defaults to a fresh one, the
    worker id to ``w1``.
    """

    def __init__(self, job_file: str, env: dict[str, str], **config: Any) -> None:
        config = {"group": f"g-{uuid.uuid4().hex}", "worker_id": "w1", **config}
        os.environ.update(env)
        try:
            self.job = load_job(str(JOBS / job_file))
        finally:
            for key in env:
                os.environ.pop(key, None)
        self.worker = Worker(self.job, WorkerConfig(**config))
        self.error: BaseException | None = None
        self.worker.prepare()
        self.thread = threading.Thread(target=self._run, name="test-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 60.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"worker did not stop within {timeout}s"
        if self.error is not None:
            raise self.error
