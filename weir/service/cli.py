"""The ``weir`` command line.

``weir run JOB.py`` runs a worker; ``weir plan JOB.py`` prints a job's plan (with
``--check``, what its group's state on Kafka says about it: `weir.service.upgrade`);
``weir kafka start|stop`` runs the local development broker;
``weir produce-sample`` writes sample readings; ``weir demo`` shows it all;
``weir --version`` names the installed version.
User errors print one line on stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from weir import __version__
from weir.service import topics_cli
from weir.service.config import (
    GUARANTEES,
    LOG_FORMATS,
    LOG_LEVELS,
    MEMBERSHIPS,
    RESTART_STRATEGIES,
    load_config,
)
from weir.service.exceptions import ClientStuck, ConfigError, ShutdownOverran, WeirError

if TYPE_CHECKING:
    from weir.operators.physical import PhysicalPlan
    from weir.service.config import WorkerConfig
    from weir.service.worker import Worker

log = logging.getLogger("weir")


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The worker flags (a contract, docs/architecture.md); each is also WEIR_<NAME>
    and a --config TOML key."""
    p.add_argument("--config", help="TOML file with settings (flags and WEIR_* env win)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    p.add_argument("--group", help="consumer group / job id (default: the job's name)")
    p.add_argument("--worker-id", help="stable id of this worker (default: host name)")
    p.add_argument("--slots", help="slot threads in this worker (default 1)")
    p.add_argument("--processes", help="worker processes on this machine (default 1)")
    p.add_argument("--process-index", type=int, help=argparse.SUPPRESS)  # set by --processes
    p.add_argument(
        "--standby-replicas",
        help="keep warm copies of other partitions' state by tailing their changelogs (0|1)",
    )
    p.add_argument("--guarantee", choices=GUARANTEES, help="default exactly-once")
    p.add_argument("--checkpoint-interval-ms", help="checkpoint interval (default 1000)")
    p.add_argument(
        "--checkpoint-timeout-ms",
        help="a checkpoint not complete by then fails and the restart strategy applies"
        " (default 7000)",
    )
    p.add_argument("--state-dir", help="directory for local state (default .weir-state)")
    p.add_argument("--http-port", help="metrics/health/status port; 0 = off (default)")
    p.add_argument("--http-host", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    p.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json")
    p.add_argument(
        "--restart-strategy",
        choices=RESTART_STRATEGIES,
        help="after an unexpected slot error: restart from the last checkpoint"
        " (default exponential-delay)",
    )
    p.add_argument(
        "--membership",
        choices=MEMBERSHIPS,
        help="static: rejoin the group under the worker id after a restart, without a"
        " rebalance (partitions of a stopped worker wait for session.timeout.ms); default dynamic",
    )
    p.add_argument(
        "--broker-timeout-s",
        help="how long Kafka may be unreachable, at start or later, before the worker"
        " exits with code 3 (default 300)",
    )
    p.add_argument(
        "--allow-state-reset",
        action="store_true",
        default=None,
        help="start even though the group holds keyed state no stateful operator of the"
        " job has (renamed or removed): that state is deleted, renamed operators start"
        " empty",
    )
    p.add_argument(
        "--rename-state",
        action="append",
        metavar="OLD=NEW",
        help="carry the keyed state of operator OLD (no longer in the job) over to"
        " operator NEW: its changelog is copied, then deleted",
    )
    p.add_argument("--restart-attempts", help="restarts before the worker exits (default 5)")
    p.add_argument("--restart-delay-ms", help="(first) delay before a restart (default 1000)")
    p.add_argument(
        "--kafka",
        action="append",
        metavar="KEY=VALUE",
        help="librdkafka setting for all clients (kafka.consumer.X / kafka.producer.X for one)",
    )
    p.add_argument(
        "--schema-registry-url",
        help="schema registry for Avro/Protobuf/JSON Schema formats (Confluent API)",
    )
    p.add_argument(
        "--schema-registry",
        action="append",
        metavar="KEY=VALUE",
        help="schema registry client setting, e.g. basic.auth.user.info=U:P (repeatable)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weir", description="Weir stream processor")
    parser.add_argument("--version", action="version", version=f"weir {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job until stopped")
    run.add_argument("job", help="job file (a Python module defining `job`)")
    _run_flags(run)

    plan = sub.add_parser("plan", help="print a job's operators and topics")
    plan.add_argument("job")
    plan.add_argument("--group", help="consumer group / job id (default: the job's name)")
    plan.add_argument(
        "--check",
        action="store_true",
        help="compare the job's stateful operators with the state the group holds on Kafka"
        " (exit 2 when `weir run` would refuse to start)",
    )
    plan.add_argument("--bootstrap", help="Kafka bootstrap servers, for --check")
    plan.add_argument("--config", help="TOML file with settings, for --check")
    plan.add_argument("--kafka", action="append", metavar="KEY=VALUE", help="as for run")
    plan.add_argument(
        "--allow-state-reset",
        action="store_true",
        default=None,
        help="with --check: as `weir run --allow-state-reset` would see it",
    )
    plan.add_argument(
        "--rename-state",
        action="append",
        metavar="OLD=NEW",
        help="with --check: as `weir run --rename-state` would see it",
    )

    kafka = sub.add_parser("kafka", help="local single-node Kafka broker for development")
    kafka_sub = kafka.add_subparsers(dest="kafka_command", required=True)
    start = kafka_sub.add_parser("start")
    start.add_argument("--port", type=int, default=9092)
    start.add_argument("--dir", type=Path, default=None, help="data directory")
    stop = kafka_sub.add_parser("stop", help="stop the broker(s) `weir kafka start` started")
    stop.add_argument("--port", type=int, default=None, help="only the one on this port")
    stop.add_argument("--dir", type=Path, default=None, help="only the one with this data dir")

    topics_cli.add_parser(sub)

    sample = sub.add_parser("produce-sample", help="write sample sensor readings to a topic")
    sample.add_argument("--bootstrap", default=None)
    sample.add_argument("--topic", default="sensors")
    sample.add_argument("--count", type=int, default=1000, help="readings (with --rate, 0: no end)")
    sample.add_argument("--tags", type=int, default=5)
    sample.add_argument(
        "--rate",
        type=float,
        default=None,
        help="readings a second, each stamped with the time it is written (default: all at once)",
    )

    demo = sub.add_parser("demo", help="run the example job end to end and print its output")
    demo.add_argument("--bootstrap", default=None, help="existing Kafka (default: start one)")
    demo.add_argument("--count", type=int, default=1000)
    return parser


def _cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    from weir.service.http import serve
    from weir.service.jobfile import load_job
    from weir.service.logs import setup_logging
    from weir.service.supervisor import supervise
    from weir.service.worker import Worker

    config = load_config(vars(args))
    setup_logging(config.log_level, config.log_format)
    job = load_job(args.job)  # fail here, once, on a bad job file
    if config.processes > 1 and args.process_index is None:
        return supervise(argv, config)
    worker = Worker(job, config, process_index=args.process_index)
    _process_settings(worker)
    if config.http_port:  # before connecting: /ready says what it waits for
        serve(worker, config.http_host, config.http_port)
    worker.prepare()
    try:
        worker.run()
    except (ShutdownOverran, ClientStuck) as exc:  # a client call may still hang: exit now
        log.error("%s", exc)
        logging.shutdown()
        os._exit(exc.exit_code)
    return 0


def _process_settings(worker: Worker) -> None:
    """Process-wide settings of a worker process: SIGTERM/SIGINT finish the current
    checkpoint and leave the group; the garbage collector runs less often — the hot
    path allocates many short-lived tuples, and the default thresholds spend ~10% of
    CPU in the collector (measured)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _cmd_plan(args: argparse.Namespace) -> int:
    """The job's plan; with ``--check``, the difference between its stateful operators
    and the state its group holds, and the exit code `weir run` would meet (2 when
    it would refuse to start)."""
    from weir.operators.physical import compile_plan
    from weir.operators.plan import Repartition
    from weir.service.jobfile import load_job
    from weir.service.upgrade import generated_name_warning

    config = load_config(vars(args)) if args.check else None
    job = load_job(args.job)
    plan = compile_plan(job, args.group or (config and config.group) or job.name)
    print(plan.describe())
    print(f"source topics: {', '.join(plan.user_source_topics)}")
    print(f"sink topics: {', '.join(plan.sink_topics)}")
    for state in plan.stateful:
        where = f"on {state.input_topic}, changelog {state.changelog}"
        print(f"state: {state.name} ({state.op.kind}) {where}")
    for source in plan.repartitions:
        print(f"repartition topic: {source.topic} (group {plan.group!r})")
    if config is None:
        for state in plan.stateful:
            if state.op.auto_named:
                print(f"warning: {generated_name_warning(state)}")
        for node in (n for root in plan.roots for n in root.walk()):
            if isinstance(node.op, Repartition) and node.op.auto_named:
                print(
                    f"warning: {node.op.name} names the repartition topic {node.op.topic} under"
                    " a generated name: give the key_by a stable name=..., or records in the"
                    " topic when a changed job starts are left behind"
                )
        return 0
    return _check_plan(plan, config)


def _check_plan(plan: PhysicalPlan, config: WorkerConfig) -> int:
    from weir.service.clients import ClientSettings
    from weir.service.exceptions import StateMismatch
    from weir.service.topics import connect_admin
    from weir.service.upgrade import read_state

    settings = ClientSettings(config, plan.group, f"{plan.group}.plan-check")
    admin = connect_admin(settings, config.bootstrap, config.connect_timeout_s)
    diff = read_state(admin, plan, config.rename_state, config.connect_timeout_s)
    print(diff.describe())
    if not diff.safe and not config.allow_state_reset:
        raise StateMismatch(diff.refusal())
    return 0


def _cmd_kafka(args: argparse.Namespace) -> int:
    from weir.service import local_kafka

    if args.kafka_command == "start":
        return local_kafka.cli_start(args.port, args.dir)
    return local_kafka.cli_stop(args.dir, args.port)


def _cmd_topics(args: argparse.Namespace) -> int:
    return topics_cli.run(args)


def _cmd_sample(args: argparse.Namespace) -> int:
    """Write sample readings: all at once, or with ``--rate`` a steady stream until
    ``--count`` are written or SIGTERM/SIGINT (a container's stop) ends it cleanly."""
    from weir.service.sample import produce_readings, readings, stream_readings

    if args.count < 0 or (args.count == 0 and args.rate is None):
        raise ConfigError(f"--count {args.count}: expected a positive number (0 only with --rate)")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError(f"--rate {args.rate:g}: expected readings a second above 0")
    bootstrap = args.bootstrap or os.environ.get("WEIR_BOOTSTRAP", "127.0.0.1:9092")
    print(topics_cli.create(bootstrap, args.topic, partitions=3), flush=True)
    if args.rate is None:
        produce_readings(bootstrap, args.topic, readings(args.count, args.tags))
        written = args.count
    else:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"writing {args.rate:g} readings a second to {args.topic}", flush=True)
        count = args.count or None
        written = stream_readings(bootstrap, args.topic, args.rate, count, args.tags, stop)
    print(f"wrote {written} readings to {args.topic} on {bootstrap}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from weir.service.demo import run_demo

    return run_demo(args.bootstrap, args.count)


COMMANDS = {
    "plan": _cmd_plan,
    "kafka": _cmd_kafka,
    "produce-sample": _cmd_sample,
    "topics": _cmd_topics,
    "demo": _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args, argv)
        return COMMANDS[args.command](args)
    except WeirError as exc:
        print(f"weir: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (``weir topics list | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
