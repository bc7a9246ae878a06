"""The contenders: how to start each system on one query, and what it can run.

Each system runs on one machine from its own environment (Weir from the
repository's ``.venv``, the Python peers from ``benchmarks/.peers/<name>``, see
``benchmarks/nexmark/setup_peers.sh``; Flink and Kafka Streams as local Java
programs from jars built by ``benchmarks/nexmark/jvm.py``), against the same
broker, reading the whole input topic from the beginning with a fresh
consumer group and writing a fresh output topic. One process each; the ``-2``
variants use two cores: Weir with ``--processes 2``, Flink with parallelism 2,
Kafka Streams with 2 stream threads.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from benchmarks.nexmark import jvm, spec
from benchmarks.nexmark.spec import JOIN_QUERIES, QUERIES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEERS = ROOT / "benchmarks" / ".peers"
WEIR_PY = ROOT / ".venv" / "bin" / "python"

EOS = "exactly-once"
ALO = "at-least-once"


@dataclass(frozen=True)
class Launch:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    prepare: list[list[str]] = field(default_factory=list)  # commands to run first
    http_port: int = 0


@dataclass(frozen=True)
class System:
    name: str
    label: str
    guarantee: str
    queries: tuple[str, ...]
    package: str  # distribution whose version the report shows
    python: Path | None  # None: a JVM peer (runtime "jvm")
    # How the harness knows a run is complete: "committed" (the group committed
    # all input) or "exit" (the process ends at the end of its input).
    done: str = "committed"
    not_expressible: dict[str, str] = field(default_factory=dict)
    # Queries it runs whose output cannot equal the batch reference, and why: their
    # figures are reported and marked "not verified" (other mismatches fail the run).
    not_verifiable: dict[str, str] = field(default_factory=dict)
    # Much slower than the rest: its throughput runs read a prefix of the input
    # (run.py --slow-events) so that three repeats fit the time budget.
    slow: bool = False
    latency_queries: tuple[str, ...] = ("q1", "count")
    # Processes (Weir), parallelism (Flink) or stream threads (Kafka Streams).
    parallelism: int = 1
    # How the harness sees that consumption could start: "group" (the consumer group
    # got its partitions) or "log" (Flink assigns partitions itself: the peer prints
    # `jvm.Markers` lines — when each source task opened and read its first record).
    start: str = "group"
    # Part of the default `run.py --systems` (the Python comparison); the others are named.
    default: bool = True

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == EOS

    @property
    def runtime(self) -> str:
        return "python" if self.python is not None else "jvm"

    @property
    def engine(self) -> str:
        """A JVM peer's jar (`jvm.ENGINES`)."""
        return {"flink": "flink", "kafka-streams": "kstreams"}[self.package]

    def available(self) -> bool:
        if self.python is None:
            return jvm.tools_missing() is None
        return self.python.exists()

    def version(self) -> str:
        if not self.available():
            return "not installed"
        if self.package == "weir":
            return weir_version()
        if self.python is None:
            return jvm.versions()[self.package]
        code = f"import importlib.metadata as m; print(m.version({self.package!r}))"
        try:
            out = subprocess.run(
                [str(self.python), "-c", code], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        return out.stdout.strip() or "unknown"

    def launch(
        self,
        query: str,
        *,
        bootstrap: str,
        source: str,
        output: str,
        group: str,
        state_dir: Path,
        partitions: int,
        http_port: int,
        tail: bool,
    ) -> Launch:
        if self.python is None:
            engine = self.engine
            return Launch(
                [
                    "java", "-jar", str(jvm.jar(engine)), "--query", query,
                    "--bootstrap", bootstrap, "--input", source, "--output", output,
                    "--group", group, "--state-dir", str(state_dir),
                    "--parallelism" if engine == "flink" else "--threads", str(self.parallelism),
                    "--spec", SPEC_JSON,
                ]
            )  # fmt: skip
        py = str(self.python)
        if self.name.startswith("weir"):
            return Launch(
                [
                    py, "-m", "weir.service.cli", "run", f"benchmarks/nexmark/jobs/{query}.py",
                    "--bootstrap", bootstrap, "--group", group, "--worker-id", "bench",
                    "--slots", "1", "--processes", str(self.parallelism),
                    "--guarantee", self.guarantee,
                    "--checkpoint-interval-ms", "1000", "--state-dir", str(state_dir),
                    "--http-port", str(http_port), "--log-level", "warning",
                ],
                {"NEXMARK_IN": source, "NEXMARK_OUT": output},
                http_port=http_port,
            )  # fmt: skip
        if self.name.startswith("quix"):
            return Launch(
                [
                    py, str(HERE / "peers" / "quix_app.py"), "--query", query,
                    "--bootstrap", bootstrap, "--input", source, "--output", output,
                    "--group", group, "--state-dir", str(state_dir),
                    "--guarantee", self.guarantee,
                    "--join", "state" if self.name == "quix-state" else "interval",
                ]
            )  # fmt: skip
        if self.name.startswith("faust"):
            return Launch(
                [py, str(HERE / "peers" / "faust_app.py"), "worker", "-l", "warn", "--without-web"],
                {
                    "NEXMARK_QUERY": query, "NEXMARK_BOOTSTRAP": bootstrap,
                    "NEXMARK_IN": source, "NEXMARK_OUT": output, "NEXMARK_GROUP": group,
                    "NEXMARK_STATE_DIR": str(state_dir),
                    "NEXMARK_PARTITIONS": str(partitions), "NEXMARK_GUARANTEE": self.guarantee,
                },
            )  # fmt: skip
        if self.name.startswith("bytewax"):
            recovery = state_dir / "recovery"
            recovery.mkdir(parents=True, exist_ok=True)
            return Launch(
                [
                    py, "-m", "bytewax.run", "benchmarks/nexmark/peers/bytewax_app.py:flow",
                    "-w", "1", "-r", str(recovery), "-s", "1", "-b", "0",
                ],
                {
                    "NEXMARK_QUERY": query, "NEXMARK_BOOTSTRAP": bootstrap,
                    "NEXMARK_IN": source, "NEXMARK_OUT": output,
                    "NEXMARK_TAIL": "1" if tail else "0",
                },
                prepare=[[py, "-m", "bytewax.recovery", str(recovery), "1"]],
            )  # fmt: skip
        if self.name.startswith("raw"):
            return Launch(
                [
                    py, str(HERE / "peers" / "raw.py"), "--query", query,
                    "--bootstrap", bootstrap, "--input", source, "--output", output,
                    "--group", group,
                ]
            )  # fmt: skip
        raise ValueError(self.name)


def weir_version() -> str:
    """pyproject's version and the commit (``+dirty`` if the runtime has local changes)."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "weir"],
            cwd=ROOT, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return version
    return f"{version} ({head}{'+dirty' if dirty else ''})" if head else version


# The queries' parameters for the JVM peers, from spec.py (which owns them).
SPEC_JSON = orjson.dumps(
    {
        "dollar_to_euro": spec.DOLLAR_TO_EURO,
        "q2_modulus": spec.Q2_MODULUS,
        "q5_size_ms": spec.Q5_SIZE_MS,
        "q5_slide_ms": spec.Q5_SLIDE_MS,
        "q7_size_ms": spec.Q7_SIZE_MS,
        "out_of_orderness_ms": int(spec.OUT_OF_ORDERNESS_S * 1000),
    }
).decode()

FAUST_NO_WINDOWS = (
    "Faust's windowed tables have no watermark and emit nothing when an event-time"
    " window ends (window-close callbacks run from a processing-time cleanup timer,"
    " outside the stream's commits)"
)
RAW_STATELESS = "the raw loop is the stateless limit only (no state, no windows)"
FAUST_NO_JOINS = (
    "Faust joins a stream with a table by lookup in processing order; it has no"
    " event-time window or interval joins"
)
QUIX_INTERVAL_JOIN_ORDER = (
    "Quix's interval join matches a pair only when its two records are processed in"
    " event-time order (each side searches [ts - bound, ts] of the other's state), and"
    " its repartition topics interleave the four input partitions in runs seconds"
    " apart: an auction and its seller processed out of order are never joined"
)
QUIX_LATE_AFTER_REPARTITION = (
    "Quix closes a window by the largest timestamp seen in its partition, and its"
    " repartition topic interleaves the four input partitions in fetch-sized runs"
    " seconds apart: with the spec's 1 s grace, persons and auctions arriving after"
    " their window closed are dropped as late (Weir's watermark is the minimum over the"
    " input partitions behind the repartition)"
)
QUIX_STATE_NO_WINDOW_JOIN = (
    "a window join by hand would need a watermark over the input partitions behind"
    " the repartition, which Quix does not give (see Quix Streams' q8)"
)
PEER_QUERIES = tuple(q for q in QUERIES if q not in JOIN_QUERIES)  # joins: Weir, Quix only

SYSTEMS: tuple[System, ...] = (
    System("weir", "Weir, exactly-once", EOS, QUERIES, "weir", WEIR_PY),
    System(
        "weir-2",
        "Weir, exactly-once, 2 processes",
        EOS,
        QUERIES,
        "weir",
        WEIR_PY,
        parallelism=2,
        latency_queries=(),
        default=False,
    ),
    System(
        "weir-alo",
        "Weir, at-least-once",
        ALO,
        ("q0",),
        "weir",
        WEIR_PY,
        latency_queries=("q1",),
    ),
    System(
        "quix",
        "Quix Streams, exactly-once",
        EOS,
        QUERIES,
        "quixstreams",
        PEERS / "quix" / "bin" / "python",
        not_verifiable={"q3": QUIX_INTERVAL_JOIN_ORDER, "q8": QUIX_LATE_AFTER_REPARTITION},
    ),
    System(
        "quix-state",
        "Quix Streams, exactly-once, q3 joined by hand in state",
        EOS,
        ("q3",),
        "quixstreams",
        PEERS / "quix" / "bin" / "python",
        not_expressible={"q8": QUIX_STATE_NO_WINDOW_JOIN},
        latency_queries=(),
        default=False,
    ),
    System(
        "faust",
        "Faust, exactly-once",
        EOS,
        ("q0", "q1", "q2", "count"),
        "faust-streaming",
        PEERS / "faust" / "bin" / "python",
        not_expressible={
            "q5": FAUST_NO_WINDOWS,
            "q7": FAUST_NO_WINDOWS,
            "q3": FAUST_NO_JOINS,
            "q8": FAUST_NO_JOINS,
        },
        slow=True,
    ),
    System(
        "bytewax",
        "Bytewax, at-least-once",
        ALO,
        PEER_QUERIES,
        "bytewax",
        PEERS / "bytewax" / "bin" / "python",
        done="exit",
    ),
    System(
        "raw",
        "raw confluent-kafka loop, at-least-once",
        ALO,
        ("q0", "q1", "q2"),
        "confluent-kafka",
        WEIR_PY,
        not_expressible={q: RAW_STATELESS for q in ("q5", "q7", "count", "q3", "q8")},
        latency_queries=(),
    ),
    System(
        "flink",
        "Flink, exactly-once, parallelism 1",
        EOS,
        PEER_QUERIES,
        "flink",
        None,
        start="log",
        default=False,
    ),
    System(
        "flink-2",
        "Flink, exactly-once, parallelism 2",
        EOS,
        PEER_QUERIES,
        "flink",
        None,
        parallelism=2,
        start="log",
        latency_queries=(),
        default=False,
    ),
    System(
        "kstreams",
        "Kafka Streams, exactly-once, 1 thread",
        EOS,
        PEER_QUERIES,
        "kafka-streams",
        None,
        default=False,
    ),
    System(
        "kstreams-2",
        "Kafka Streams, exactly-once, 2 threads",
        EOS,
        PEER_QUERIES,
        "kafka-streams",
        None,
        parallelism=2,
        latency_queries=(),
        default=False,
    ),
)

BY_NAME = {s.name: s for s in SYSTEMS}
