"""Fast failover: how long a killed worker's partitions go without visible output,
with dynamic and with static group membership.

A 2-worker group runs tests/jobs/keyed_count.py (a running count per record key,
exactly-once) on a 6-partition input fed at a steady ``--rate`` (records/s, spread
over the partitions and over ``--keys`` keys per partition). After a warm-up, worker
B is stopped in one of three ways (the scenarios):

- ``restart``: SIGKILL, then at once the same ``weir run`` again (same ``--worker-id``,
  same ``--state-dir``);
- ``kill``: SIGKILL, not restarted: the survivor A must take B's partitions;
- ``stop``: SIGTERM (a clean stop: final checkpoint, then exit), not restarted.

each with ``--membership dynamic`` (the default) and ``--membership static`` (every
consumer joins with ``group.instance.id``, KIP-345).

What is timed (the same in every scenario): from the event (the SIGKILL; for
``stop``, B's exit after its final commit) to the moment a read_committed consumer
first receives an output record that (1) derives from one of the partitions B owned
and (2) was appended to the output after the event (the output topic uses
LogAppendTime, so older records that merely become visible late, and B's own final
outputs, do not count). That is: until B's partitions are visibly processed again,
by whichever worker. The first such record's append time is reported too
(processed and produced, not yet committed), as are the survivor's rebalances and its
own longest visible pause, and how long the restarted worker took to answer
``/ready``.

After every run the feeder stops, the group commits all input, the workers stop
cleanly, and the whole output is read back (read_committed): every key's counts must
be exactly 1, 2, ..., n for its n inputs. Duplicates, gaps, extras and reorderings are
counted as exactly-once violations.

Rows alternate (dynamic, static, dynamic, ...), each run on fresh topics and a fresh
group, so that load from other work on a shared machine hits both modes alike.

Run from the repository root::

    .venv/bin/python -m benchmarks.failover                      # ~12 minutes
    .venv/bin/python -m benchmarks.failover --rows restart-dynamic,restart-static --runs 1

Uses ``KAFKA_BOOTSTRAP`` if set, else starts the project's local broker. Results go to
``benchmarks/results/failover.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Message, Producer

from benchmarks.common import (
    RESULTS,
    ROOT,
    TMP,
    BenchmarkError,
    Child,
    OffsetProbe,
    Tail,
    admin_client,
    create_topics,
    delete_topics,
    format_table,
    machine_busy_seconds,
    machine_header,
    median,
    open_run,
    read_topic,
    result_rows,
    run_rows,
    select_rows,
    send,
    unique,
    wait_until,
    write_report,
)
from benchmarks.elasticity import max_gap, settled
from benchmarks.stateful_common import fetch_metrics, http_get, metric_sum
from tests.ports import free_port

JOB = ROOT / "tests" / "jobs" / "keyed_count.py"
JOB_NAME = "keyed-count"
PARTITIONS = 6
AFTER_S = 3.0  # keep feeding this long after the first post-event output


@dataclass(frozen=True)
class Row:
    """One scenario in one membership mode."""

    scenario: str  # restart | kill | stop
    mode: str  # dynamic | static

    @property
    def name(self) -> str:
        return f"{self.scenario}-{self.mode}"

    @property
    def label(self) -> str:
        return f"{SCENARIOS[self.scenario]}, {self.mode}"


SCENARIOS = {
    "restart": "kill -9 + restart",
    "kill": "kill -9, no restart",
    "stop": "SIGTERM, no restart",
}
ROWS = [Row(s, m) for s in SCENARIOS for m in ("dynamic", "static")]


# -- processes ---------------------------------------------------------------------------
class Worker(Child):
    """One ``weir run`` of keyed_count.py as worker ``worker_id``; ``incarnation``
    only names its log, so a restarted worker (same id, same state dir) keeps both."""

    def __init__(
        self, worker_id: str, incarnation: str, group: str, env: dict[str, str], args: list[str]
    ) -> None:
        port = free_port()
        cmd = [
            sys.executable, "-m", "weir.service.cli", "run", str(JOB), "--group", group,
            "--worker-id", worker_id, "--http-port", str(port), *args,
        ]  # fmt: skip
        super().__init__(f"fo-{incarnation}", cmd, env, http_port=port)
        self.ports = [port]  # what elasticity.settled reads

    def rebalances(self) -> float:
        return metric_sum(fetch_metrics(self.http_port), "weir_rebalances_total", weir_job=JOB_NAME)

    def ready(self) -> bool:
        return http_get(self.http_port, "/ready", timeout=0.5)[0] == 200


def owned_partitions(worker: Worker) -> set[int]:
    status = wait_until(worker.status, 30, f"{worker.name}'s /status", check=worker.check_running)
    return {int(tp.rsplit("-", 1)[1]) for tp in status["partitions"]}


# -- input and output ----------------------------------------------------------------------
class Feeder(threading.Thread):
    """``rate`` records/s, round-robin over the partitions, each to a random one of
    ``keys`` keys of that partition ("p<partition>-k<i>", so every output names the
    source partition it came from). Counts what was delivered, per key."""

    def __init__(self, bootstrap: str, topic: str, keys: int, rate: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.topic, self.keys, self.rate = topic, keys, rate
        self.produced = 0
        self.delivered: dict[str, int] = {}
        self.failed = 0
        self._halt = threading.Event()
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )

    def _on_delivery(self, err: Any, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            return
        key = msg.key().decode()
        self.delivered[key] = self.delivered.get(key, 0) + 1

    def run(self) -> None:
        rng = random.Random(7)
        started = time.monotonic()
        while not self._halt.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.produced < due:
                p = self.produced % PARTITIONS
                key = f"p{p}-k{rng.randrange(self.keys)}".encode()
                value = b'{"n": %d}' % self.produced
                send(self.producer, self.topic, value, key, partition=p,
                     on_delivery=self._on_delivery)  # fmt: skip
                self.produced += 1
            self.producer.poll(0.005)

    def halt(self) -> None:
        self._halt.set()
        self.join(10)
        if self.producer.flush(30) or self.failed:
            raise BenchmarkError(f"feeder: {self.failed} records failed or unsent")


def source_partition(m: Message) -> int:
    return int(orjson.loads(m.value())["key"].split("-", 1)[0][1:])


class Watch:
    """Tails the output (read_committed) from its start, noting when each record
    became visible, per source partition, and the first visible record that derives
    from ``watched`` partitions and was appended after ``after_ms`` (see `arm`)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.visible: dict[int, list[float]] = {p: [] for p in range(PARTITIONS)}
        self.watched: set[int] = set()
        self.after_ms = float("inf")
        self.first_at: float | None = None  # wall clock
        self.tail = Tail(bootstrap, topic, self._note)
        self.tail.start()

    def arm(self, watched: set[int], after_ms: float) -> None:
        self.watched, self.after_ms = watched, after_ms

    def _note(self, received: float, m: Message) -> None:
        p = source_partition(m)
        self.visible[p].append(received)
        if self.first_at is None and p in self.watched and m.timestamp()[1] > self.after_ms:
            self.first_at = received


def check_counts(bootstrap: str, topic: str, delivered: dict[str, int]) -> dict[str, Any]:
    """Read the whole output back (read_committed) and compare every key's counts with
    1..n for its n delivered inputs; also returns the per-partition append times."""
    counts: dict[str, list[int]] = {}
    appended: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}

    def note(m: Message) -> None:
        r = orjson.loads(m.value())
        counts.setdefault(r["key"], []).append(r["count"])
        appended[int(r["key"].split("-", 1)[0][1:])].append(m.timestamp()[1])

    records = read_topic(bootstrap, topic, PARTITIONS, note, timeout=120)
    duplicates = gaps = extras = reordered = 0
    for key in delivered.keys() | counts.keys():
        seen = counts.get(key, [])
        expected = set(range(1, delivered.get(key, 0) + 1))
        duplicates += len(seen) - len(set(seen))
        gaps += len(expected - set(seen))
        extras += len(set(seen) - expected)
        reordered += seen != sorted(seen)
    return {
        "outputs": records,
        "inputs": sum(delivered.values()),
        "keys": len(counts),
        "duplicates": duplicates,
        "gaps": gaps,
        "extras": extras,
        "reordered_keys": reordered,
        "violations": duplicates + gaps + extras + reordered,
        "appended": appended,
    }


# -- one run ---------------------------------------------------------------------------------
def failover_run(bootstrap: str, row: Row, run: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start A and B, feed, stop B as ``row.scenario`` says, time until B's partitions
    are visibly processed again, then drain, stop and check every count."""
    admin = admin_client(bootstrap)
    src, out, group = unique("fo-in"), unique("fo-out"), unique("fo")
    create_topics(admin, [src], PARTITIONS)
    create_topics(admin, [out], PARTITIONS, {"message.timestamp.type": "LogAppendTime"})
    state_dir = TMP / "fo-state" / group
    env = {"WEIR_TEST_IN": src, "WEIR_TEST_OUT": out, "WEIR_TEST_JOB": JOB_NAME}
    worker_args = [
        "--bootstrap", bootstrap, "--state-dir", str(state_dir), "--membership", row.mode,
        "--checkpoint-interval-ms", str(args.checkpoint_interval_ms),
    ]  # fmt: skip
    if args.session_timeout_ms:
        worker_args += ["--kafka", f"consumer.session.timeout.ms={args.session_timeout_ms}"]
    tag = f"{row.name}-r{run}"
    workers: list[Worker] = []
    feeder = watch = None
    probe = OffsetProbe(bootstrap)
    busy0, wall0 = machine_busy_seconds(), time.monotonic()
    try:
        a = Worker("a", f"a-{tag}", group, env, worker_args)
        b = Worker("b", f"b-{tag}", group, env, worker_args)
        workers += [a, b]
        settled([a, b], PARTITIONS, timeout=120)
        watch = Watch(bootstrap, out)
        feeder = Feeder(bootstrap, src, args.keys, args.rate)
        feeder.start()
        time.sleep(args.warmup_s)
        b_parts = owned_partitions(b)
        a_parts = set(range(PARTITIONS)) - b_parts
        a_rebalances = a.rebalances()
        load_at_event = os.getloadavg()[0]

        # The event, and its time: for a SIGTERM, when B has exited (its last outputs
        # are committed by then and appended before that moment).
        restarted: Worker | None = None
        if row.scenario == "stop":
            b.check_exit(b.stop(timeout=60))
        event = time.time()
        watch.arm(b_parts, event * 1000)
        if row.scenario != "stop":
            b.kill()
        if row.scenario == "restart":
            restarted = Worker("b", f"b2-{tag}", group, env, worker_args)
            workers.append(restarted)
        ready_after = None
        deadline = time.monotonic() + args.timeout_s
        while watch.first_at is None:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"no output for B's partitions {sorted(b_parts)} within"
                                     f" {args.timeout_s:.0f}s")  # fmt: skip
            a.check_running()
            if restarted is not None:
                restarted.check_running()
                if ready_after is None and restarted.ready():
                    ready_after = time.time() - event
            time.sleep(0.02)
        visible_after = watch.first_at - event
        survivors = [a] if restarted is None else [a, restarted]
        settled(survivors, PARTITIONS, timeout=120)
        time.sleep(AFTER_S)
        t_end = time.time()
        a_rebalances = a.rebalances() - a_rebalances
        feeder.halt()
        inputs = feeder.produced
        wait_until(lambda: probe.committed(group, src, PARTITIONS) >= inputs, 120,
                   "the group to commit all input", check=a.check_running, every=0.2)  # fmt: skip
        watch.tail.stop()
        codes = {w.name: w.stop() for w in survivors}
        busy = (machine_busy_seconds() - busy0) / (time.monotonic() - wall0)
        check = check_counts(bootstrap, out, feeder.delivered)
        appended = check.pop("appended")
        first_appended = min(
            (ts for p in b_parts for ts in appended[p] if ts > event * 1000), default=None
        )
        result = {
            "row": row.name,
            "scenario": row.scenario,
            "mode": row.mode,
            "run": run,
            "b_partitions": sorted(b_parts),
            "visible_after_s": visible_after,
            "appended_after_s": None if first_appended is None else first_appended / 1000 - event,
            "restarted_ready_after_s": ready_after,
            "survivor_rebalances": a_rebalances,
            "survivor_longest_pause_s": max(
                max_gap(watch.visible[p], event, t_end) for p in a_parts
            ),
            "loadavg_at_event": load_at_event,
            "machine_busy_cores": busy,
            "exit_codes": codes,
            **check,
        }
        for w in workers:
            w.discard_log()
        return result
    finally:
        probe.close()
        if feeder is not None and feeder.is_alive():
            with contextlib.suppress(BenchmarkError):
                feeder.halt()
        if watch is not None and watch.tail.is_alive():
            watch.tail.stop()
        for w in workers:
            w.kill()
        delete_topics(admin, [src, out])
        shutil.rmtree(state_dir, ignore_errors=True)


def describe(r: dict[str, Any]) -> str:
    ready = r["restarted_ready_after_s"]
    return ", ".join(
        [
            f"visible after {r['visible_after_s']:.2f} s",
            f"appended after {r['appended_after_s']:.2f} s",
            *([] if ready is None else [f"restarted worker ready after {ready:.2f} s"]),
            f"survivor: {r['survivor_rebalances']:.0f} rebalance callbacks,"
            f" longest pause {r['survivor_longest_pause_s']:.2f} s",
            f"EOS violations {r['violations']} ({r['outputs']:,} outputs, {r['keys']} keys)",
            f"loadavg {r['loadavg_at_event']:.1f}",
        ]
    )


# -- summary and report -----------------------------------------------------------------------
def summarize(row: Row, runs: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [r for r in runs if r["row"] == row.name]
    ok = [r for r in mine if "error" not in r]

    def med(field: str) -> float | None:
        values = [r[field] for r in ok if r[field] is not None]
        return median(values) if values else None

    visible = [r["visible_after_s"] for r in ok]
    return {
        "row": row.name,
        "label": row.label,
        "scenario": row.scenario,
        "mode": row.mode,
        "runs": len(ok),
        "failed": [r["error"] for r in mine if "error" in r],
        "visible_after_s": med("visible_after_s"),
        "visible_min_s": min(visible, default=None),
        "visible_max_s": max(visible, default=None),
        "visible_all_s": [round(v, 2) for v in visible],
        "appended_after_s": med("appended_after_s"),
        "restarted_ready_after_s": med("restarted_ready_after_s"),
        "survivor_rebalances": med("survivor_rebalances"),
        "survivor_longest_pause_s": med("survivor_longest_pause_s"),
        "violations": sum(r["violations"] for r in ok),
        "outputs": sum(r["outputs"] for r in ok),
        "loadavg_at_event": med("loadavg_at_event"),
        "machine_busy_cores": med("machine_busy_cores"),
    }


HEADERS = [
    "scenario",
    "membership",
    "runs",
    "median s",
    "min s",
    "max s",
    "appended s",
    "ready s",
    "survivor rebalance callbacks",
    "survivor pause s",
    "EOS violations",
    "loadavg",
    "machine busy",
    "every run, s",
]


def cells(s: dict[str, Any]) -> list[str]:
    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    return [
        SCENARIOS[s["scenario"]],
        s["mode"],
        str(s["runs"]),
        sec(s["visible_after_s"]),
        sec(s["visible_min_s"]),
        sec(s["visible_max_s"]),
        sec(s["appended_after_s"]),
        sec(s["restarted_ready_after_s"]),
        f"{s['survivor_rebalances']:.0f}",
        sec(s["survivor_longest_pause_s"]),
        f"{s['violations']} / {s['outputs']:,}",
        f"{s['loadavg_at_event']:.1f}",
        f"{s['machine_busy_cores']:.2f}",
        ", ".join(f"{v:.2f}" for v in s["visible_all_s"]),
    ]


def table(summaries: list[dict[str, Any]], markdown: bool) -> str:
    rows = result_rows(summaries, HEADERS, cells, lambda s: SCENARIOS[s["scenario"]])
    return format_table(HEADERS, rows, markdown)


def figure(summaries: list[dict[str, Any]], name: str) -> str:
    s = next((s for s in summaries if s["row"] == name), None)
    return "-" if s is None or s["visible_after_s"] is None else f"{s['visible_after_s']:.2f} s"


def markdown(report: dict[str, Any]) -> str:
    cfg, s = report["config"], report["summary"]
    session = cfg["session_timeout_ms"] or 10000
    default = "" if cfg["session_timeout_ms"] else " (Weir's default)"
    b_sizes = sorted({len(r["b_partitions"]) for r in report["runs"] if "error" not in r})
    static = next((x for x in s if x["row"] == "restart-static" and x["runs"]), None)
    failed = [f"- {x['label']}: {e}" for x in s for e in x["failed"]]
    return "\n".join(
        [
            "# Failover: kill, restart, static membership",
            "",
            machine_header(report["machine"]),
            "",
            f"Measured with `{report['command']}`. Load average (1 min) at the start"
            f" {report['loadavg_start']:.2f}, at the end {report['loadavg_end']:.2f}; the"
            " table gives each row's median at the moment of the kill/stop (loadavg) and"
            " the cores everything on the machine kept busy during its runs (machine busy,"
            " 2.00 = both). 2 cores, shared with the broker and with other people's test"
            " runs, so seconds here include waiting for a CPU.",
            "",
            f"Setup: tests/jobs/keyed_count.py (a running count per record key, exactly-once),"
            f" {PARTITIONS} input partitions, 2 workers (`weir run`, 1 slot each, checkpoint"
            f" interval {cfg['checkpoint_interval_ms']} ms), input fed at {cfg['rate']:,.0f}"
            f" records/s over {PARTITIONS} x {cfg['keys']} keys, {cfg['warmup_s']:.0f} s"
            f" warm-up, then worker B ({' or '.join(map(str, b_sizes))} of the"
            f" {PARTITIONS} partitions) is stopped. session.timeout.ms"
            f" {session}{default}, heartbeat.interval.ms 2000, transaction.timeout.ms"
            " 10000. Fresh topics and group per run; rows alternate dynamic/static.",
            "",
            "**What is timed:** from the event (the SIGKILL; for SIGTERM, B's exit after its"
            " final commit) until a read_committed consumer first receives an output record"
            " that derives from one of B's partitions and was appended after the event"
            " (the output topic uses LogAppendTime). In words: until B's partitions are"
            " visibly processed again, by whichever worker.",
            "",
            table(s, True),
            "",
            "median/min/max s: that time. appended s: the same for when the first such"
            " record was appended (produced, its transaction not yet committed; median)."
            " ready s: when the restarted worker answered /ready. survivor rebalance"
            " callbacks: assign/revoke/lost callbacks worker A went through (0 = A did not"
            " notice). survivor pause: A's own partitions' longest gap between visible"
            " outputs from the event until 3 s after the first output. EOS violations:"
            " duplicates + gaps + extras + reordered keys over every key's counts (must be"
            " 1..n for n inputs) / outputs read back, summed over the runs.",
            *(
                []
                if static is None
                else [
                    "",
                    f"A static restart's {static['visible_after_s']:.2f} s (medians): the"
                    " restarted worker answers /ready after"
                    f" {static['restarted_ready_after_s']:.2f} s (Python start-up,"
                    " connecting, rejoining under its instance id, opening"
                    " its local state), its first output for those partitions is appended at"
                    f" {static['appended_after_s']:.2f} s and becomes visible with the"
                    " checkpoint that commits it, one checkpoint interval"
                    f" ({cfg['checkpoint_interval_ms']} ms) later.",
                ]
            ),
            "",
            "## Static membership and session.timeout.ms",
            "",
            "With dynamic membership a restarted worker joins as a new member, and the"
            " coordinator cannot finish that rebalance until the dead member's session has"
            f" expired ({session / 1000:.0f} s without a heartbeat), so a kill -9 followed"
            " by an immediate restart costs about as much as a kill without restart"
            f" (here {figure(s, 'restart-dynamic')} vs {figure(s, 'kill-dynamic')}), and"
            " the survivor takes part in the rebalance. With static membership"
            " (`--membership static`: group.instance.id = the worker id per consumer) the"
            " coordinator recognises the restarted worker as the same member and hands it"
            " its partitions back at once, without a rebalance: the failover becomes the"
            " worker's start-up, state check and first checkpoint"
            f" ({figure(s, 'restart-static')}); its new transactional producer (same"
            " transactional id) fences the dead one and aborts its open transaction, so"
            " the output is not held back either.",
            "",
            "The price is paid when a worker goes away for good. A static member does not"
            " leave the group when it stops, not even on a clean SIGTERM, so its"
            " partitions wait for session.timeout.ms before anyone else takes them"
            f" (SIGTERM: {figure(s, 'stop-static')} static vs {figure(s, 'stop-dynamic')}"
            " dynamic, which leaves the group on the way out). After a kill -9 both modes"
            " wait for the session timeout (and for the dead worker's open transaction to"
            f" time out): {figure(s, 'kill-dynamic')} dynamic, {figure(s, 'kill-static')}"
            " static. session.timeout.ms sets both sides of the trade: it must be longer"
            " than a restart takes (start-up, here about"
            f" {static['restarted_ready_after_s'] if static else float('nan'):.0f} s to"
            " /ready on a loaded machine, plus any deploy or scheduling time) for static"
            " membership to avoid the rebalance, and every"
            " second of it is added to the outage when a worker dies and is not replaced."
            " Use static membership when workers are restarted in place (systemd,"
            " Kubernetes StatefulSets with stable worker ids); keep dynamic membership, or"
            " a short session timeout (`--kafka consumer.session.timeout.ms=...`), when"
            " workers come and go.",
            "",
            "A kill -9 that is not followed by a restart also stalls the survivor's"
            " *visible* output (survivor pause): the dead worker's open transaction covers"
            " output partitions that A writes to as well, and read_committed readers see"
            " nothing past it until the broker aborts it (transaction.timeout.ms, 10 s)."
            " A restarted worker ends that at once, in either mode: its producer, with the"
            " same transactional id, fences the dead one on start-up.",
            *(["", "## Failed runs", "", *failed] if failed else []),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="kills per restart row (median)")
    p.add_argument("--runs-no-restart", type=int, default=3, help="runs per kill/stop row")
    p.add_argument("--rows", default=",".join(r.name for r in ROWS))
    p.add_argument("--rate", type=float, default=2000.0, help="input records/s in total")
    p.add_argument("--keys", type=int, default=200, help="keys per input partition")
    p.add_argument("--warmup-s", type=float, default=5.0)
    p.add_argument("--checkpoint-interval-ms", type=int, default=1000)
    p.add_argument(
        "--session-timeout-ms",
        type=int,
        default=0,
        help="consumer.session.timeout.ms for the workers (default: Weir's, 10000)",
    )
    p.add_argument("--timeout-s", type=float, default=60.0, help="longest wait for output")
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="re-render benchmarks/results/failover.md from failover.json; run nothing",
    )
    args = p.parse_args(argv)
    if args.report_only:
        report = orjson.loads((RESULTS / "failover.json").read_bytes())
        names = report["config"]["rows"].split(",")
        report["summary"] = [summarize(r, report["runs"]) for r in ROWS if r.name in names]
        write_report(RESULTS / "failover", report, markdown(report))
        return 0
    select_rows(p, args, ROWS)
    broker, report = open_run("benchmarks.failover", args)
    runs: list[dict[str, Any]] = []
    for scenario, repeats in (("restart", args.runs), ("no-restart", args.runs_no_restart)):
        rows = [r for r in args.selected if (r.scenario == "restart") == (scenario == "restart")]
        if rows:
            runs += run_rows(rows, repeats, lambda r, n: failover_run(broker.bootstrap, r, n, args),
                             describe)  # fmt: skip
    summaries = [summarize(r, runs) for r in args.selected]
    report.update(loadavg_end=os.getloadavg()[0], runs=runs, summary=summaries)
    print(table(summaries, False))
    if not args.no_write:
        write_report(RESULTS / "failover", report, markdown(report))
    return 1 if any(s["violations"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
