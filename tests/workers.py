"""Running workers in tests: as subprocesses (for kill -9) or as threads (fast).

Test job files under tests/jobs/ read their topic names and knobs from
``WEIR_TEST_*`` environment variables, so one file serves many tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from service.config import WorkerConfig
from service.jobfile import load_job
from service.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
JOBS = Path(__file__).resolve().parent / "jobs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**values: Any) -> dict[str, str]:
    """``WEIR_TEST_<NAME>`` variables for a test job."""
    return {f"WEIR_TEST_{k.rstrip('_').upper()}": str(v) for k, v in values.items()}


class WorkerProcess:
    """``weir run`` in a subprocess, with its HTTP port on for /status."""

    def __init__(
        self,
        job: str,
        bootstrap: str,
        group: str,
        worker_id: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.http_port = free_port()
        self.log_path = log_dir / f"{worker_id}.log"
        cmd = [
            sys.executable, "-m", "service.cli", "run", str(JOBS / job),
            "--bootstrap", bootstrap, "--group", group, "--worker-id", worker_id,
            "--http-port", str(self.http_port), *(args or []),
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
        try:
            url = f"http://127.0.0.1:{self.http_port}/status"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return orjson.loads(resp.read())
        except OSError:
            return None

    def metrics(self, timeout: float = 2.0) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()

    def wait_running(self, timeout: float = 60.0, partitions: bool = True) -> dict[str, Any]:
        """Until /status says running (with partitions assigned, if asked)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}: {self.log_tail()}")
            st = self.status()
            if st and st["state"] == "running" and (st["partitions"] or not partitions):
                return st
            time.sleep(0.1)
        raise AssertionError(f"worker not running after {timeout}s: {self.log_tail()}")

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


class WorkerThread:
    """A `Worker` on a thread of the test process: quick to start, easy to inspect."""

    def __init__(self, job_file: str, env: dict[str, str], **config: Any) -> None:
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
