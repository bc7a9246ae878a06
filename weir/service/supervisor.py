"""``weir run --processes N``: N worker processes on this machine, supervised.

Each child is an ordinary ``weir run`` with ``--processes 1`` and a process
index: its own consumer-group member, worker id ``<worker-id>.<n>``,
transactional id ``<group>.<worker-id>.<n>``, state under its own id and, with
``--http-port P``, HTTP on ``P + n``. This is how a CPU-bound job uses all
cores despite the GIL.

A child that dies is restarted with exponential backoff (1 s doubling to 30 s,
reset after a minute of health); one that fails on a bad job or config (exit
code 2) stops the whole set, since a restart cannot fix it. SIGTERM/SIGINT are
forwarded to every child; the supervisor exits once they all have.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from weir.service.config import WorkerConfig

log = logging.getLogger(__name__)

USER_ERROR = 2
HEALTHY_AFTER_S = 60.0


class Child:
    def __init__(self, index: int, argv: list[str], env: dict[str, str]) -> None:
        self.index = index
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.backoff = 1.0
        self.restart_at: float | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)
        self.started = time.monotonic()
        log.info("process %d started (pid %d)", self.index, self.proc.pid)


def child_argv(argv: list[str], index: int, config: WorkerConfig) -> list[str]:
    """The parent's ``weir run`` arguments plus this child's overrides (the last
    occurrence of a flag wins, and flags win over WEIR_* variables), without any
    ``--kafka`` setting: those may be secrets, and a command line is visible to
    every user of the machine (they travel in the environment, `child_env`)."""
    extra = ["--processes", "1", "--process-index", str(index)]
    if config.http_port:
        extra += ["--http-port", str(config.http_port + index)]
    return [sys.executable, "-m", "weir.service.cli", *_without_kafka_flags(argv), *extra]


def child_env(config: WorkerConfig) -> dict[str, str]:
    """The environment of a child: the parent's, plus every librdkafka setting as a
    ``WEIR_KAFKA_<KEY>`` variable (readable only by the same user)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_KAFKA_")}
    for key, value in config.kafka.items():
        env["WEIR_KAFKA_" + key.replace(".", "_").upper()] = value
    return env


def _without_kafka_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--kafka":
            skip = True
        elif not arg.startswith("--kafka="):
            out.append(arg)
    return out


def supervise(argv: list[str], config: WorkerConfig) -> int:
    """Run ``config.processes`` children until stopped; the exit code of the set."""
    env = child_env(config)
    children = [Child(i, child_argv(argv, i, config), env) for i in range(config.processes)]
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    log.info("supervising %d worker processes", len(children))
    for child in children:
        child.start()
    code = 0
    while not stopping.is_set():
        now = time.monotonic()
        for child in children:
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at:
                    child.start()
                continue
            rc = child.proc.poll()
            if rc is None:
                if now - child.started > HEALTHY_AFTER_S:
                    child.backoff = 1.0
                continue
            if rc == USER_ERROR:
                log.error("process %d failed on the job or config (exit 2); stopping", child.index)
                code = USER_ERROR
                stopping.set()
                break
            log.warning("process %d exited with %d; restarting in %.0fs", child.index, rc,
                        child.backoff)  # fmt: skip
            child.proc = None
            child.restart_at = now + child.backoff
            child.backoff = min(30.0, child.backoff * 2)
        stopping.wait(0.2)
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + config.shutdown_timeout_s + 10
    for child in children:
        if child.proc is None:
            continue
        try:
            rc = child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            rc = child.proc.wait()
        if rc not in (0, -signal.SIGTERM) and code == 0:
            code = 1
    return code
