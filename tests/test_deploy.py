"""The deployment files in deploy/ hold together, without a Docker engine.

Static checks: every service deploy/README.md names exists in docker-compose.yml;
Kafka runs the official image in KRaft mode with single-replica internal topics;
every ``weir`` command a container runs (Dockerfile ENTRYPOINT/CMD, compose
``command:``) passes the real CLI parser and its ``WEIR_*`` environment the real
config loader; every mounted file, build input, port and volume exists and agrees;
the Dockerfile runs as a non-root user with a health check on ``/health``.

Live checks, against the session's Kafka broker: every PromQL expression in the
Grafana dashboard and the alert rules names only metric families a running worker
serves on /metrics; and a real Prometheus (``/usr/bin/prometheus``), configured
from deploy/prometheus/prometheus.yml with the worker as its only target, scrapes
growing counters, runs every dashboard query without error, and evaluates the
alert rules.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.feeding import Feeder, n_key, numbered
from tests.kafka_fixture import consume_all
from tests.waiting import wait_for
from tests.workers import WorkerProcess, free_port, job_env, metric
from weir.operators.physical import compile_plan
from weir.service.cli import _parser
from weir.service.config import load_config
from weir.service.jobfile import load_job

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "weir.json"
README_FILE = DEPLOY / "README.md"

BOUND = 60.0  # upper bound of every wait on a live process, seconds
FEED_RATE = 500  # records/s into the live worker


# -- reading the files ---------------------------------------------------------------
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's ``environment`` (map or list form) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv_of(value: str | list[str] | None) -> list[str] | None:
    """A compose ``command``/``entrypoint`` as argv (the string form is split like a shell)."""
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT/CMD/HEALTHCHECK CMD arguments; only the JSON (exec) form is accepted."""
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"Dockerfile: {args!r} is not in exec (JSON array) form")
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), args
    return argv


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"Dockerfile: ENV {args!r}: use the KEY=VALUE form"
            env[key] = value
    return env


def image_files() -> dict[PurePosixPath, Path]:
    """Where the Dockerfile's COPY instructions put repository paths in the image."""
    workdir = PurePosixPath("/")
    placed: dict[PurePosixPath, Path] = {}
    for instruction, args in dockerfile():
        if instruction == "WORKDIR":
            workdir = workdir / args
        elif instruction == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            *sources, dest = parts
            target = workdir / dest
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"Dockerfile: COPY {source}: not in the repository"
                placed[target / PurePosixPath(source).name if dest.endswith("/") else target] = path
    return placed


def in_image(path: str) -> Path | None:
    """The repository file at ``path`` (absolute or relative to WORKDIR) in the image."""
    workdir = PurePosixPath("/")
    for args in instructions("WORKDIR"):
        workdir = workdir / args
    wanted = workdir / path
    for target, source in image_files().items():
        if wanted == target:
            return source
        if source.is_dir() and wanted.is_relative_to(target):
            return source / wanted.relative_to(target)
    return None


def docker_ignores(path: str) -> bool:
    """Whether deploy/Dockerfile.dockerignore keeps ``path`` (repository-relative) out of the build.

    Docker's rules: patterns in order, the last one that matches a path or one of
    its parent directories wins, ``!`` re-includes, ``**`` matches any directories.
    """
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/").replace("**", "*")
        if any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes):
            ignored = not negated
    return ignored


def readme_services() -> list[str]:
    section = README_FILE.read_text().split("## Services", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([\w.-]+)`", section, flags=re.MULTILINE)


def builds_weir(service: dict[str, Any]) -> bool:
    """Does the service build deploy/Dockerfile?"""
    build = service.get("build")
    if build is None:
        return False
    context = COMPOSE_FILE.parent / build["context"]
    return (context / build["dockerfile"]).resolve() == DOCKERFILE.resolve()


def weir_image() -> str:
    """The tag the Weir image is built under."""
    (tag,) = {s["image"] for s in services().values() if builds_weir(s)}
    return tag


def weir_services() -> dict[str, dict[str, Any]]:
    """Services that run the image built from deploy/Dockerfile (building it, or by its tag)."""
    image = weir_image()
    return {
        name: service
        for name, service in services().items()
        if builds_weir(service) or service.get("image") == image
    }


def worker_services() -> dict[str, dict[str, Any]]:
    """Weir services that run a job (``weir run``)."""
    return {
        name: service
        for name, service in weir_services().items()
        if any(parse_weir(argv).command == "run" for argv in weir_commands(service))
    }


def weir_commands(service: dict[str, Any]) -> list[list[str]]:
    """Every ``weir ...`` command line the service's container runs.

    The image's ENTRYPOINT/CMD unless the service overrides them; a shell
    entrypoint (``sh -c SCRIPT``) contributes each ``weir`` command in its script.
    """
    entrypoint = argv_of(service.get("entrypoint"))
    command = argv_of(service.get("command"))
    if entrypoint is None:
        entrypoint = exec_form(instructions("ENTRYPOINT")[-1])
        if command is None:
            command = exec_form(instructions("CMD")[-1])
    argv = entrypoint + (command or [])
    if PurePosixPath(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        found = re.findall(r"(?:^|[;&|(\s])(weir\s[^;&|\n)]*)", argv[2])
        assert found, f"shell script runs no weir command: {argv[2]!r}"
        return [shlex.split(cmd) for cmd in found]
    return [argv]


def parse_weir(argv: list[str]) -> Any:
    """``argv`` (starting with ``weir``) through the real CLI parser; fails the test if refused."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] == "weir" and scripts["weir"] == "weir.service.cli:main", argv
    try:
        return _parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"the weir CLI refuses {shlex.join(argv)}")


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts (short syntax)."""
    named = set(compose().get("volumes") or {})
    out = {}
    for spec in service.get("volumes") or []:
        source, target = spec.split(":")[:2]
        if source in named:
            continue
        out[target] = (COMPOSE_FILE.parent / source).resolve()
    return out


def published(service: dict[str, Any]) -> dict[int, int | None]:
    """Container port -> host port (None: ephemeral) of a service's ``ports``."""
    out: dict[int, int | None] = {}
    for spec in service.get("ports") or []:
        parts = str(spec).split(":")
        out[int(parts[-1].split("/")[0])] = int(parts[-2]) if len(parts) > 1 else None
    return out


def worker_http_port() -> int:
    ports = {
        int(env_of(s)["WEIR_HTTP_PORT"])
        for s in weir_services().values()
        if "WEIR_HTTP_PORT" in env_of(s)
    }
    assert len(ports) == 1, f"workers disagree on WEIR_HTTP_PORT: {ports}"
    return ports.pop()


# -- PromQL ----------------------------------------------------------------------------
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_WORDS |= {"and", "or", "unless", "offset", "atan2", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords excluded)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", e):
        if m.group(2) is None and m.group(1).lower() not in _PROMQL_WORDS:
            names.add(m.group(1))
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_exprs() -> dict[str, str]:
    """``"panel title / refId"`` -> PromQL of every query in the dashboard."""
    out = {}
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            out[f"{panel['title']} / {target['refId']}"] = target["expr"]
    return out


def variable_metrics() -> set[str]:
    """Metric names the dashboard's template variables read (``label_values(metric, label)``)."""
    names = set()
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
            assert m, f"variable {var['name']}: unexpected query {query!r}"
            names |= promql_metrics(m.group(1))
    return names


def rule_files() -> list[Path]:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    return [PROMETHEUS_FILE.parent / f for f in config.get("rule_files") or []]


def rule_exprs() -> dict[str, str]:
    out = {}
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[f"{path.name} {rule.get('alert') or rule.get('record')}"] = str(rule["expr"])
    return out


def exported_names(text: str) -> tuple[set[str], set[str]]:
    """(every series name a /metrics page may carry, the names that have samples now).

    A labelled metric without children has a HELP/TYPE but no samples yet; its
    series names follow from its type (counter ``_total``, histogram ``_bucket``...).
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    declared, sampled = set(), set()
    for family in text_string_to_metric_families(text):
        declared |= {family.name + s for s in suffixes.get(family.type, ("",))}
        sampled |= {s.name for s in family.samples}
    return declared | sampled, sampled


def tool(name: str) -> str:
    """Path of a Prometheus binary; Debian's `prometheus` package ships them (./dev installs it)."""
    path = shutil.which(name)
    if path:
        return path
    if shutil.which("apt-get") is None:
        pytest.skip(f"{name} is not installed and apt-get is unavailable to install `prometheus`")
    pytest.fail(f"{name} not found: run ./dev setup, or apt-get install prometheus")


def compose_cli() -> list[str]:
    """The real Docker Compose v2 (a test dependency ships its binary; a `docker compose`
    plugin does too). ``config`` needs no Docker engine."""
    candidates = [[str(Path(sys.executable).parent / "docker-compose")], ["docker", "compose"]]
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    for argv in candidates:
        if not shutil.which(argv[0]):
            continue
        done = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True)
        if done.returncode == 0 and int(done.stdout.strip().lstrip("v").split(".")[0]) >= 2:
            return argv
    pytest.fail(
        "Docker Compose v2 not found: install the test dependencies (pip install -e .[test])"
    )


def compose_config(*files: Path) -> dict[str, Any]:
    """The model `docker compose config` makes of ``files``: validated against the Compose
    specification, anchors, merges and ``extends`` resolved. Fails the test if refused."""
    argv = [
        *compose_cli(),
        *(a for f in files for a in ("-f", str(f))),
        "config",
        "--format",
        "json",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=BOUND)
    assert done.returncode == 0, f"docker compose config refuses it: {done.stderr}"
    return json.loads(done.stdout)


# -- static checks -------------------------------------------------------------------
def test_promql_metric_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{job=~"$job", x="y{z}"}'
        "[$__rate_interval]))) / on (job) group_left (instance) b offset 5m > bool 1e3"
        " or absent(c:rule) unless sum without (le) (d[5m:1m])"
    )
    assert promql_metrics(expr) == {"a_bucket", "b", "c:rule", "d"}


def test_readme_services_exist_and_every_service_is_documented() -> None:
    documented = readme_services()
    assert documented, "deploy/README.md has no services table"
    assert set(documented) == set(services()), (
        f"README documents {sorted(documented)}, compose defines {sorted(services())}"
    )
    readme = README_FILE.read_text()
    assert "docker compose -f deploy/docker-compose.yml up" in readme
    assert "--scale" not in readme, "a scaled worker service would repeat its worker id"
    for service in services().values():
        for host_port in published(service).values():
            if host_port is not None:
                assert str(host_port) in readme, f"README does not mention port {host_port}"


def test_kafka_is_a_single_kraft_node_on_the_official_image() -> None:
    kafka = services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:"), kafka["image"]
    assert kafka["image"].split(":", 1)[1] not in ("", "latest"), "pin the Kafka image"
    env = env_of(kafka)
    assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env), "KRaft needs no ZooKeeper"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    controllers = env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
    listeners = dict(
        (name, address)
        for name, _, address in (x.partition("://") for x in env["KAFKA_LISTENERS"].split(","))
    )
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == node and voter.split(":")[0] == kafka["hostname"]
    assert listeners[controllers[0]].endswith(":" + voter.split(":")[1])
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    assert env["CLUSTER_ID"], "a fixed CLUSTER_ID keeps the volume's log dirs valid"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", f"{key} must be 1 on a single broker (exactly-once needs it)"
    # The advertised address containers use is the one the Weir services bootstrap from.
    advertised = {a.partition("://")[2] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name, service in weir_services().items():
        assert env_of(service)["WEIR_BOOTSTRAP"] in advertised, name
    assert "healthcheck" in kafka, "workers and kafka-init wait for a healthy broker"


def test_topics_of_the_example_job_are_created_before_the_workers_start() -> None:
    init = services()["kafka-init"]
    assert init["image"] == services()["kafka"]["image"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = (
        " ".join(argv_of(init.get("entrypoint")) or [])
        + " "
        + " ".join(argv_of(init["command"]) or [])
    )
    assert "kafka-topics.sh" in script and "--create" in script
    created = set(re.findall(r"for topic in ([^;]+);", script)[0].split()) | set(
        re.findall(r"--topic\s+([\w.-]+)", script)
    )
    assert re.search(r"--partitions\s+[1-9]", script)
    for name, service in weir_services().items():
        assert service["depends_on"]["kafka-init"]["condition"] == (
            "service_completed_successfully"
        ), name
        for argv in weir_commands(service):
            args = parse_weir(argv)
            if args.command == "run":
                job_file = in_image(args.job)
                assert job_file is not None and job_file.is_file(), f"{name}: no {args.job}"
                plan = compile_plan(load_job(str(job_file)), "deploy")
                topics = set(plan.user_source_topics) | set(plan.sink_topics)
                assert topics <= created, f"{name}: topics {topics - created} are never created"
            elif args.command == "produce-sample":
                assert args.topic in created, f"{name}: produces to missing topic {args.topic}"


def test_every_weir_container_runs_a_command_and_config_the_worker_accepts() -> None:
    image = image_env()
    runs = 0
    for name, service in weir_services().items():
        env = {**image, **env_of(service)}
        for argv in weir_commands(service):
            args = parse_weir(argv)
            if args.command != "run":
                continue
            runs += 1
            config = load_config(vars(args), env)  # raises ConfigError on a bad value
            assert config.http_host == "0.0.0.0", f"{name}: Prometheus could not reach 127.0.0.1"
            assert config.http_port == worker_http_port() > 0
            assert config.state_dir in instructions("VOLUME")[-1]
            mounts = [v.split(":")[1] for v in service.get("volumes") or []]
            assert config.state_dir in mounts, (
                f"{name}: state dir {config.state_dir} not on a volume"
            )
    assert runs >= 1, "no service runs `weir run`"


def worker_id_of(service: dict[str, Any]) -> str | None:
    """The worker id a worker service's container runs with, if the compose file fixes it:
    ``--worker-id``, else ``WEIR_WORKER_ID``, else its ``hostname`` (the default)."""
    ids = {parse_weir(argv).worker_id for argv in weir_commands(service)} - {None}
    assert len(ids) <= 1, ids
    return next(iter(ids), None) or env_of(service).get("WEIR_WORKER_ID") or service.get("hostname")


def test_workers_keep_their_ids_across_up_build() -> None:
    """`up --build` recreates every container: a worker's id must not come from its
    container (a new id would start a new state directory and transactional id, and
    leave the old incarnation's transaction to time out), so every worker service fixes
    its own, distinct id, and runs exactly one container."""
    workers = worker_services()
    assert len(workers) >= 2, f"the example runs two workers, not {sorted(workers)}"
    ids = {}
    for name, service in workers.items():
        worker_id = worker_id_of(service)
        assert worker_id, f"{name}: no fixed worker id (hostname, WEIR_WORKER_ID or --worker-id)"
        ids[name] = worker_id
        assert service.get("deploy", {}).get("replicas", 1) == 1, (
            f"{name}: replicas of one service would share the worker id {worker_id}"
        )
        assert service.get("stop_grace_period"), f"{name}: a clean stop needs its grace period"
    assert len(set(ids.values())) == len(ids), f"worker ids collide: {ids}"


def test_one_service_builds_the_image_the_others_run_it() -> None:
    """Two services building one tag fail with current Compose (their builds race for
    the tag): one service builds it; the others run it by tag, never pulled (no
    registry has it), and depend on the builder so that starting any of them builds it."""
    builders = [name for name, service in services().items() if "build" in service]
    assert builders and all(builds_weir(services()[name]) for name in builders), builders
    assert len(builders) == 1, f"{builders} all build the Weir image: only one may"
    (builder,) = builders
    assert services()[builder].get("pull_policy") == "build", f"{builder}: never pull weir:*"
    runners = {n: s for n, s in weir_services().items() if n != builder}
    assert {"producer"} < set(runners), sorted(runners)
    for name, service in runners.items():
        assert service.get("pull_policy") == "never", (
            f"{name}: would try to pull {service['image']}"
        )
        assert builder in (service.get("depends_on") or {}), f"{name} does not depend on {builder}"


def test_the_producer_writes_a_steady_stream_of_current_readings() -> None:
    """The demo producer writes readings stamped with the current time at a steady rate
    for good: batches with event times of their own, written in a loop, arrive late for
    the example's windows and bunch up."""
    (argv,) = weir_commands(services()["producer"])
    args = parse_weir(argv)
    assert args.command == "produce-sample"
    assert args.rate and args.rate > 0, "a steady --rate, stamped with the wall clock"
    assert args.count == 0, "--count 0: until stopped"
    assert services()["producer"].get("restart") == "unless-stopped"


def readme_overrides(tmp_path: Path) -> dict[str, Path]:
    """deploy/README.md's override files, by section title, written to ``tmp_path`` (their
    ``extends: file:`` made absolute, as it is relative to where the README puts them)."""
    out = {}
    for section in README_FILE.read_text().split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", body, flags=re.S)):
            path = tmp_path / f"override-{len(out)}.yml"
            path.write_text(block.replace("file: docker-compose.yml", f"file: {COMPOSE_FILE}"))
            out[f"{title} {i}"] = path
    return out


def test_docker_compose_accepts_the_file_and_the_readme_adds_a_worker(tmp_path: Path) -> None:
    """`docker compose config` (the real Compose, which validates against the Compose
    specification) accepts the file and reads it as the static tests above do, and the
    override files deploy/README.md shows: another job runs on every worker; another
    worker gets an id, a host port and a state directory of its own, and Prometheus finds
    it."""
    model = compose_config(COMPOSE_FILE)["services"]
    assert set(model) == set(services())
    for name, service in worker_services().items():
        assert model[name]["hostname"] == service["hostname"]
        assert model[name]["image"] == weir_image()
    assert [n for n, s in model.items() if s.get("build")] == [
        n for n, s in services().items() if "build" in s
    ]

    overrides = readme_overrides(tmp_path)
    assert set(overrides) == {"Scaling 0", "Running another job 0"}, sorted(overrides)
    another_job = compose_config(COMPOSE_FILE, overrides["Running another job 0"])["services"]
    for name in worker_services():
        assert another_job[name]["command"][0] == "/jobs/my_job.py", name
        assert another_job[name]["hostname"] == model[name]["hostname"], name
    merged = compose_config(COMPOSE_FILE, overrides["Scaling 0"])["services"]
    added = set(merged) - set(model)
    assert added, "the README's override adds no service"
    workers = {n: s for n, s in merged.items() if n in worker_services() or n in added}
    ids = [s.get("hostname") for s in workers.values()]
    assert None not in ids and len(set(ids)) == len(ids), f"worker ids: {ids}"
    host_ports = [p["published"] for s in merged.values() for p in s.get("ports") or []]
    assert len(set(host_ports)) == len(host_ports), f"host ports collide: {host_ports}"
    prometheus = yaml.safe_load(PROMETHEUS_FILE.read_text())
    (names,) = [sd["names"] for sc in prometheus["scrape_configs"] for sd in sc["dns_sd_configs"]]
    for name in added:
        service = merged[name]
        assert service["image"] == weir_image() and service["pull_policy"] == "never", name
        assert not service.get("build"), f"{name} builds the image again"
        assert set(names) <= set(service["networks"]["default"]["aliases"]), name
        assert service["command"] == merged["worker-1"]["command"], name


def test_mounted_files_ports_and_volumes_exist() -> None:
    spec = compose()
    named = set(spec.get("volumes") or {})
    for name, service in spec["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} missing"
            else:
                assert source in named, f"{name}: named volume {source} not declared"
        if "build" in service:
            context = COMPOSE_FILE.parent / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), name
            assert (context / "pyproject.toml").is_file(), f"{name}: build context is not the repo"
        for dep in service.get("depends_on") or {}:
            assert dep in spec["services"], f"{name} depends on unknown {dep}"

    # One HTTP port everywhere: the image, the workers and the Prometheus scrape.
    port = worker_http_port()
    assert instructions("EXPOSE") == [str(port)]
    assert image_env()["WEIR_HTTP_PORT"] == str(port)
    for name, service in weir_services().items():
        if "WEIR_HTTP_PORT" in env_of(service):
            assert set(published(service)) <= {port}, name
            assert {int(p) for p in service.get("expose", [])} <= {port}, name
    prometheus = yaml.safe_load(PROMETHEUS_FILE.read_text())
    for scrape in prometheus["scrape_configs"]:
        for sd in scrape.get("dns_sd_configs", []):
            assert sd["port"] == port
            for dns_name in sd["names"]:  # a name every worker answers to
                for name, service in worker_services().items():
                    networks = service.get("networks") or {}
                    aliases = (networks.get("default") or {}).get("aliases") or []
                    assert dns_name in aliases or dns_name == name, f"{name} is not {dns_name}"
        for static in scrape.get("static_configs", []):
            for target in static["targets"]:
                host, _, target_port = target.partition(":")
                assert host in spec["services"] and int(target_port) == port, target

    # Prometheus: its config and rule files are mounted where the config names them.
    prom = spec["services"]["prometheus"]
    mounts = bind_mounts(prom)
    flags = dict(a.lstrip("-").split("=", 1) for a in argv_of(prom["command"]) if "=" in a)
    config_path = flags["config.file"]
    assert mounts[config_path] == PROMETHEUS_FILE
    for rule in prometheus.get("rule_files") or []:
        inside = str(PurePosixPath(config_path).parent / rule)
        assert mounts.get(inside) == (PROMETHEUS_FILE.parent / rule).resolve(), rule
        assert (PROMETHEUS_FILE.parent / rule).is_file()
    assert 9090 in published(prom)

    # Grafana: data source points at the prometheus service; dashboards are where
    # the provider looks; the home dashboard is the Weir one.
    grafana = spec["services"]["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning/datasources"] == provisioning / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == provisioning / "dashboards"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    url = urllib.parse.urlsplit(source["url"])
    assert source["type"] == "prometheus" and url.hostname == "prometheus"
    assert url.port in published(prom)
    providers = yaml.safe_load((provisioning / "dashboards" / "weir.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD_FILE.parent
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert PurePosixPath(home).parent == PurePosixPath(provider["options"]["path"])
    assert (DASHBOARD_FILE.parent / PurePosixPath(home).name) == DASHBOARD_FILE
    assert 3000 in published(grafana)


def test_dockerfile_builds_weir_runs_non_root_and_checks_health() -> None:
    base = instructions("FROM")[0]
    m = re.fullmatch(r"python:3\.(\d+)(?:\.\d+)?-slim(?:-\w+)?", base)
    assert m and int(m.group(1)) >= 11, f"want a slim Python 3.11+ base, got {base}"
    placed = image_files()
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setup.get("package-dir", {})
    packages = [dirs.get(p, p.replace(".", "/")) for p in setup["packages"]]
    for path in [*packages, "pyproject.toml", "LICENSE", "constraints.txt"]:
        placed_at = [p for p in placed.values() if p == ROOT / path or p in (ROOT / path).parents]
        assert placed_at, f"Dockerfile does not COPY {path}"
    assert any(
        re.search(r"\bpip install -c constraints\.txt (?:[^&;]*\s)?\.(?:\s|$)", r)
        for r in instructions("RUN")
    ), "the image installs Weir with the tested versions (constraints.txt)"

    user = instructions("USER")[-1].split(":")[0]
    assert user not in ("root", "0"), "the worker must not run as root"
    assert any(re.search(rf"useradd .*\b{user}\b", r) for r in instructions("RUN")), user

    argv = exec_form(instructions("ENTRYPOINT")[-1]) + exec_form(instructions("CMD")[-1])
    args = parse_weir(argv)
    assert args.command == "run"
    assert in_image(args.job) is not None and in_image(args.job).is_file(), args.job
    load_config(vars(args), image_env())

    (health,) = instructions("HEALTHCHECK")
    _, _, check = health.partition("CMD ")
    probe = exec_form(check)
    assert probe[:2] == ["python", "-c"] and "/health" in probe[2]
    assert "WEIR_HTTP_PORT" in probe[2] or str(worker_http_port()) in probe[2]
    compile(probe[2], "HEALTHCHECK", "exec")  # the probe is valid Python
    assert instructions("VOLUME"), "state dir should be a volume"
    assert image_env()["WEIR_STATE_DIR"] in instructions("VOLUME")[-1]

    # The build context is the repository: what the image needs is in it, the
    # virtualenv, caches (Kafka's jars) and bytecode stay out.
    for path in ("pyproject.toml", "README.md", "weir/service/cli.py", "examples/sensor_stats.py"):
        assert not docker_ignores(path), f"Dockerfile.dockerignore hides {path}"
    for path in (".venv/bin/python", ".cache/weir/kafka.jar", "weir/service/__pycache__/cli.pyc"):
        assert docker_ignores(path), f"Dockerfile.dockerignore lets {path} into the build"
    for source in placed.values():
        assert not docker_ignores(str(source.relative_to(ROOT))), source


def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = tool("promtool")
    for args in (
        ["check", "config", str(PROMETHEUS_FILE)],
        ["check", "rules", *map(str, rule_files())],
    ):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=BOUND)
        assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_fire_on_restart_loops_and_growing_lag(tmp_path: Path) -> None:
    """promtool's rule unit tests: a job restarting again and again, a worker process
    restarted by Docker, a lag that keeps growing and slots full most of the time each
    fire their alert; a lag that is high but shrinking (catching up) does not count as
    growing, nor slots full a tenth of the time as backpressured."""
    promtool = tool("promtool")
    minute = "1m"
    scraped = 'weir_job="j", job="weir-workers"'  # Weir's job label, and the scrape job's
    tests = {
        "rule_files": [str(path) for path in rule_files()],
        "evaluation_interval": minute,
        "tests": [
            {
                "interval": minute,
                "input_series": [
                    {"series": f'weir_restarts_total{{{scraped}, instance="w1"}}',
                     "values": "0 0 1 2 3 4 5 6 7 8 9 10"},
                    {"series": f'weir_restarts_total{{{scraped}, instance="w2"}}',
                     "values": "0x12"},
                    {"series": 'process_start_time_seconds{job="weir-workers", instance="w1"}',
                     "values": "100 100 160 220 280 340 400 460 520 580 640 700"},
                    {"series": f'weir_consumer_lag{{{scraped}, topic="in", partition="0"}}',
                     "values": "5000+500x40"},
                    {"series": f'weir_consumer_lag{{{scraped}, topic="back", partition="0"}}',
                     "values": "50000-500x40"},
                    # full 45 s a minute (a share of 0.75) on w1, 6 s (0.1) on w2
                    {"series": f'weir_slot_backpressure_seconds_total{{{scraped},'
                               ' instance="w1", slot="0"}',
                     "values": "0+45x40"},
                    {"series": f'weir_slot_backpressure_seconds_total{{{scraped},'
                               ' instance="w2", slot="0"}',
                     "values": "0+6x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "6m", "alertname": "WeirRestartLoop", "exp_alerts": [
                        {"exp_labels": {"severity": "critical", "weir_job": "j",
                                        "instance": "w1"},
                         "exp_annotations": {"summary": "j on w1 restarted 5 times in 15"
                                                        " minutes."}},
                    ]},
                    {"eval_time": "6m", "alertname": "WeirWorkerRestarting", "exp_alerts": [
                        {"exp_labels": {"severity": "critical", "job": "weir-workers",
                                        "instance": "w1"},
                         "exp_annotations": {"summary": "The worker at w1 restarted 5 times in"
                                                        " 15 minutes."}},
                    ]},
                    {"eval_time": "5m", "alertname": "WeirConsumerLagGrowing", "exp_alerts": []},
                    {"eval_time": "30m", "alertname": "WeirConsumerLagGrowing", "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "weir_job": "j", "topic": "in"},
                         "exp_annotations": {"summary": "j falls behind on in: its lag grows by"
                                                        " 8.333 records a second."}},
                    ]},
                    {"eval_time": "20m", "alertname": "WeirBackpressure", "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "weir_job": "j", "instance": "w1"},
                         "exp_annotations": {"summary": "Slots of j on w1 are backpressured."}},
                    ]},
                ],
            }
        ],
    }  # fmt: skip
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=BOUND
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    dash = dashboard()
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = dashboard_exprs()
    assert exprs, "dashboard has no queries"
    used = set().union(*map(promql_metrics, exprs.values()))
    for name in (
        "weir_records_in_total",
        "weir_records_out_total",
        "weir_consumer_lag",
        "weir_checkpoint_duration_seconds_bucket",
        "weir_checkpoints_total",
        "weir_state_bytes",
        "weir_slot_busy_seconds_total",
        "weir_slot_backpressure_seconds_total",
        "weir_worker_info",
        "weir_rebalances_total",
        "weir_records_failed_total",
        "weir_end_to_end_latency_seconds_bucket",
        "weir_restarts_total",
    ):
        assert name in used, f"no panel shows {name}"
    assert any("histogram_quantile" in e and "checkpoint_duration" in e for e in exprs.values())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_queries_select_weir_jobs_by_weir_job_not_prometheus_job() -> None:
    """Weir's job label is ``weir_job``; ``job`` is the scrape job Prometheus sets, so a
    query or an alert text using ``job`` for the Weir job would select nothing useful."""
    texts = {**dashboard_exprs(), **rule_exprs()}
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            texts[f"variable {var['name']}"] = var["definition"]
    scrape_jobs = [
        c["job_name"] for c in yaml.safe_load(PROMETHEUS_FILE.read_text())["scrape_configs"]
    ]
    for where, text in texts.items():
        for name in scrape_jobs:  # selecting a scrape job (process metrics) is what job is for
            text = text.replace(f'job="{name}"', "")
        assert not re.findall(r"(?<![\w$])job\b", text), f"{where}: `job` where weir_job is meant"
    for path in rule_files():  # alert texts
        assert "$labels.job" not in path.read_text(), path
    assert "honor_labels" not in PROMETHEUS_FILE.read_text()


# -- live checks -----------------------------------------------------------------------
@pytest.fixture
def live_worker(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> Iterator[WorkerProcess]:
    """tests/jobs/tagged.py on the real broker, fed continuously while the test runs."""
    source, sink = new_topic(partitions=3), new_topic(partitions=3)
    worker = WorkerProcess(
        "tagged.py",
        kafka_bootstrap,
        f"deploy-{uuid.uuid4().hex[:8]}",
        "w1",
        tmp_path,
        env=job_env(in_=source, out=sink),
        args=[
            "--checkpoint-interval-ms",
            "200",
            "--slots",
            "2",
            "--state-dir",
            str(tmp_path / "s"),
        ],
    )
    feeder = Feeder(kafka_bootstrap, source, numbered(), FEED_RATE, key=n_key)
    try:
        worker.wait_running(BOUND)
        feeder.start()
        yield worker
        assert not feeder.errors, f"feeding the worker failed: {feeder.errors[:3]}"
    finally:
        feeder.halt()
        worker.close()


def test_dashboard_and_rules_use_only_metrics_a_worker_exports(live_worker: WorkerProcess) -> None:
    exported, _ = exported_names(live_worker.metrics())
    queries = {**dashboard_exprs(), **rule_exprs()}
    queries |= {f"variable / {m}": m for m in variable_metrics()}
    for where, expr in queries.items():
        names = promql_metrics(expr)
        assert names, f"{where}: {expr!r} selects no metric"
        unknown = names - exported
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by a worker"


def test_the_compose_producer_and_worker_close_real_windows(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """The producer's and a worker's commands from the compose file, on the real broker
    (topics renamed): the example's 10-second windows close in real time, each holding
    the readings of its 10 seconds, and no reading is late."""
    source, sink = new_topic(partitions=6), new_topic(partitions=6)
    example = (ROOT / "examples" / "sensor_stats.py").read_text()
    job = tmp_path / "sensor_stats.py"
    renamed = example.replace('"sensors"', f'"{source}"').replace(
        '.sink("sensor-stats"', f'.sink("{sink}"'
    )
    assert renamed.count(source) == renamed.count(sink) == 1, "the example's topics moved"
    job.write_text(renamed)

    (producer_argv,) = weir_commands(services()["producer"])
    rate = parse_weir(producer_argv).rate
    (worker_argv,) = weir_commands(services()["worker-1"])
    run = parse_weir(worker_argv)
    assert Path(run.job).name == job.name
    worker = WorkerProcess(
        str(job), kafka_bootstrap, f"deploy-{uuid.uuid4().hex[:8]}", "worker-1", tmp_path,
        args=[*worker_argv[3:], "--state-dir", str(tmp_path / "state")],
    )  # fmt: skip
    producer = subprocess.Popen(
        [sys.executable, "-m", "weir.service.cli", *producer_argv[1:],
         "--topic", source, "--bootstrap", kafka_bootstrap],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    started = time.time() * 1000
    try:
        worker.wait_running(BOUND)

        def full_window() -> list[dict]:
            out = [r["value"] for r in consume_all(kafka_bootstrap, sink, None, 5, partial=True)]
            return [w for w in out if w["window_start"] >= started] and out

        windows = wait_for(full_window, 2 * BOUND, "a window the producer filled", every=1)
        closed_at = time.time() * 1000
        late = metric(worker.metrics(), "weir_records_late_total")
    finally:
        producer.terminate()
        producer.wait(BOUND)
        worker.close()
    assert late == 0, f"{late:g} readings arrived late for their windows"
    full: dict[int, int] = {}
    for w in windows:
        assert w["window_end"] - w["window_start"] == 10_000, w
        assert w["window_end"] <= closed_at, "a window closed before its end"
        if w["window_start"] >= started:
            full[w["window_start"]] = full.get(w["window_start"], 0) + w["count"]
    for start, count in full.items():  # 10 s of readings, at the producer's rate
        assert 0.7 * rate * 10 <= count <= 1.3 * rate * 10, (start, count)
        assert closed_at - (start + 10_000) < 15_000, "windows close in real time"


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class Prometheus:
    """A real Prometheus server on a free loopback port, its data in a temporary directory."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def check_alive(self) -> None:
        assert self.proc.poll() is None, f"prometheus exited: {self.log_tail()}"

    def ready(self) -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp,
        ):
            return resp.status == 200
        return False

    def wait_ready(self) -> None:
        wait_for(
            self.ready,
            BOUND,
            "prometheus ready",
            check=self.check_alive,
            detail=lambda: f": {self.log_tail()}",
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = _get_json(url)
        except urllib.error.HTTPError as exc:  # 400 bad_data: the expression does not parse
            body = json.loads(exc.read())
        assert body["status"] == "success", f"{expr!r}: {body.get('error')}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait(self, what: str, check: Callable[[], Any]) -> Any:
        return wait_for(check, BOUND, f"prometheus: {what}", every=0.5, check=self.check_alive)

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def scrape_config_for(target: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, scraping only ``target``, every second."""
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    config["global"] = {
        **config.get("global", {}),
        "scrape_interval": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(path) for path in rule_files()]
    for scrape in config["scrape_configs"]:
        for key in [k for k in scrape if k.endswith("_sd_configs")]:
            del scrape[key]
        scrape["static_configs"] = [{"targets": [target]}]
        scrape["scrape_interval"] = "1s"
    return config


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for a dashboard query with every variable at "All"."""
    return (
        expr.replace("$__rate_interval", "5s")
        .replace("$__interval", "1s")
        .replace("$__range", "1m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
    )


def test_prometheus_scrapes_a_live_worker(live_worker: WorkerProcess, tmp_path: Path) -> None:
    prometheus = Prometheus(
        scrape_config_for(f"127.0.0.1:{live_worker.http_port}"), tmp_path / "prom"
    )
    try:
        prometheus.wait_ready()
        # Weir's job label is weir_job; `job` stays the scrape job's.
        series = prometheus.wait(
            "weir_records_in_total samples", lambda: prometheus.query("weir_records_in_total")
        )
        assert {s["metric"]["weir_job"] for s in series} == {"tagged"}
        scrape_jobs = {
            c["job_name"] for c in yaml.safe_load(PROMETHEUS_FILE.read_text())["scrape_configs"]
        }
        assert {s["metric"]["job"] for s in series} <= scrape_jobs
        assert {s["metric"]["instance"] for s in series} == {f"127.0.0.1:{live_worker.http_port}"}

        for expr in (
            "sum(weir_records_in_total)",
            'sum(weir_checkpoints_total{status="completed"})',
        ):
            first = prometheus.wait(expr, lambda e=expr: prometheus.value(e))
            prometheus.wait(
                f"increase of {expr} past {first}",
                lambda e=expr, f=first: (prometheus.value(e) or 0) > f,
            )

        def lag_partitions() -> bool:
            lag = prometheus.query("weir_consumer_lag")
            return {s["metric"]["partition"] for s in lag} == {"0", "1", "2"}

        prometheus.wait("weir_consumer_lag of every source partition", lag_partitions)

        # Every dashboard query runs; those over metrics the worker has samples of return data.
        _, sampled = exported_names(live_worker.metrics())
        exprs = {where: grafana_to_promql(e) for where, e in dashboard_exprs().items()}
        for expr in exprs.values():
            prometheus.query(expr)  # asserts it parses and evaluates
        expect_data = {w: e for w, e in exprs.items() if promql_metrics(e) <= sampled}
        assert len(expect_data) >= len(exprs) // 2, sorted(set(exprs) - set(expect_data))

        def empty() -> list[str]:
            return [w for w, e in expect_data.items() if not prometheus.query(e)]

        prometheus.wait("data for every panel", lambda: not empty())

        # The alert rules load and evaluate without error.
        def rules_ok() -> bool:
            groups = _get_json(f"{prometheus.url}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) == len(rule_exprs()), rules
            bad = [r for r in rules if r["health"] == "err"]
            assert not bad, bad
            return all(r["health"] == "ok" for r in rules)

        prometheus.wait("evaluation of every alert rule", rules_ok)
        firing = {
            a["labels"]["alertname"]
            for a in _get_json(f"{prometheus.url}/api/v1/alerts")["data"]["alerts"]
        }
        assert "WeirNoWorkers" not in firing
    finally:
        prometheus.close()
