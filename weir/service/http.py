"""The worker's HTTP endpoints: ``/metrics``, ``/health``, ``/ready``, ``/status``,
``/history`` (the status page's charts: ``?since=<epoch ms>`` for only newer samples),
``/state/<operator>/<key>`` and the status page at ``/``.

Served by the standard library's threading HTTP server on a daemon thread; the
handlers only read the worker's state, they never lock the hot path.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from weir.operators.timers import NO_TIME
from weir.service.exceptions import ConfigError
from weir.service.page import PAGE
from weir.service.queries import query_state

if TYPE_CHECKING:
    from weir.service.worker import Worker

log = logging.getLogger(__name__)


def status(worker: Worker) -> dict[str, Any]:
    """The JSON served at /status.

    Runs on an HTTP thread while the fetcher thread changes what it reads, so every
    collection is copied in one step (``list``/``dict``/``set`` of a dict or set run
    without letting another Python thread in) before it is iterated."""
    router = worker.router
    owned = router.slot_partitions()
    coordinator = worker.coordinator
    flow, rebalancer = worker.flow, worker.rebalancer
    watermark = worker.watermarks.watermark
    return {
        "job": worker.plan.job,
        "worker_id": worker.worker_id,
        "group": worker.group,
        "guarantee": worker.config.guarantee,
        "state": worker.state,
        "routing": router.mode,
        "plan": worker.plan.describe(),
        "graph": worker.history.graph_json(),
        "partitions": [f"{t}-{p}" for t, p in router.partitions],
        "paused": sorted(f"{t}-{p}" for t, p in set(flow.paused)) if flow else [],
        "fetch_held": flow is not None and flow.holding_since is not None,  # all slots full
        "restoring": sorted(f"{t}-{p}" for t, p in list(rebalancer.restoring))
        if rebalancer
        else [],
        "lag": {f"{t}-{p}": lag for (t, p), lag in list(worker.sampler.lag.items())},
        "watermark": watermark if watermark > NO_TIME else None,
        "watermarks": dict(worker.watermarks.watermarks),  # per input topic
        "upstream": worker.channels.describe(),
        "restarts": worker.restarts.restarts,
        "chain_on_fetch_thread": worker.inline.enabled,  # `weir.service.inline`
        "fetch_thread_batches": worker.inline.batches,
        "slots": [
            {
                "slot": slot.slot,
                "owns": owned[slot.slot] if slot.slot < len(owned) else [],
                "records": slot.stats.records,
                "batches": slot.stats.batches,
                "failed": slot.stats.failed,
                "queued": slot.inbox.records,
            }
            for slot in list(worker.slots)
        ],
        "checkpoints": [asdict(c) for c in list(coordinator.history)] if coordinator else [],
        "positions": {f"{t}-{p}": off for (t, p), off in list(router.positions.items())},
        "config": worker.config.redacted(),
    }


def readiness(worker: Worker) -> str | None:
    """None when ready; otherwise why not."""
    unavailable = worker.unavailable or worker.output.unavailable
    if unavailable is not None:
        return unavailable
    if worker.state != "running":
        return f"worker is {worker.state}"
    if not worker.router.pins:
        return "no partitions assigned"
    overdue = worker.inline.overdue() or worker.coordinator.overdue()
    if overdue is not None:
        return overdue
    restoring = list(worker.rebalancer.restoring)
    if restoring:
        names = ", ".join(f"{t}[{p}]" for t, p in sorted(restoring))
        return f"restoring state of {names}"
    return None


class _Handler(BaseHTTPRequestHandler):
    worker: Worker

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/":
            self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif path.startswith("/state/") and path.count("/") >= 3:
            _, _, operator, key = path.split("/", 3)
            code, body = query_state(self.worker, unquote(operator), unquote(key))
            self._send(code, orjson.dumps(body), "application/json")
        elif path == "/metrics":
            self._send(200, generate_latest(self.worker.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/health":
            self._send(200, b"ok\n", "text/plain")
        elif path == "/ready":
            reason = readiness(self.worker)
            if reason is None:
                self._send(200, b"ready\n", "text/plain")
            else:
                self._send(503, f"not ready: {reason}\n".encode(), "text/plain")
        elif path == "/status":
            self._send(200, orjson.dumps(status(self.worker)), "application/json")
        elif path == "/history":
            since = parse_qs(query).get("since", ["0"])[0]
            if not since.isdigit():
                self._send(400, f"since={since!r}: expected epoch ms\n".encode(), "text/plain")
                return
            body = {"interval_s": 1, "samples": self.worker.history.since(int(since))}
            self._send(200, orjson.dumps(body), "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def serve(worker: Worker, host: str, port: int) -> ThreadingHTTPServer:
    """Start serving on a daemon thread; returns the server (``server_address`` has the port).
    A port that cannot be had (taken, or not allowed) is a `ConfigError` naming it."""
    handler = type("Handler", (_Handler,), {"worker": worker})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise ConfigError(
            f"--http-port {port}: cannot listen on {host}:{port} ({exc.strerror}); expected a"
            " free port, or 0 for no HTTP server"
        ) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="weir-http", daemon=True).start()
    log.info("http on %s:%d", *server.server_address[:2])
    return server
