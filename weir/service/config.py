"""Worker settings: one frozen dataclass, filled in one place.

Precedence is flag > environment (``WEIR_<NAME>``) > TOML file (``--config``)
> default. Every value is validated here, so a bad one fails at start with one
line naming it. Keys under ``kafka.`` (``WEIR_KAFKA_…`` or a ``[kafka]`` table)
are passed to librdkafka as they are, which is how SASL/SSL are configured;
keys under ``schema_registry.`` (``--schema-registry KEY=VALUE``,
``WEIR_SCHEMA_REGISTRY_…`` or a ``[schema_registry]`` table) go to the schema
registry client the same way (``basic.auth.user.info``, ``ssl.ca.location``, …);
the values of both are never printed (see `WorkerConfig.redacted`).
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weir.operators.formats import needs_registry
from weir.service.exceptions import ConfigError

if TYPE_CHECKING:
    from weir.operators.physical import PhysicalPlan

GUARANTEES = ("exactly-once", "at-least-once")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
RESTART_STRATEGIES = ("exponential-delay", "fixed-delay", "none")
MEMBERSHIPS = ("dynamic", "static")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs besides the job itself."""

    bootstrap: str = "127.0.0.1:9092"
    group: str | None = None  # default: the job's name
    worker_id: str = field(default_factory=socket.gethostname)
    slots: int = 1
    processes: int = 1
    guarantee: str = "exactly-once"
    checkpoint_interval_ms: int = 1000
    # A checkpoint not complete by then fails (a hung or too slow function): restart.
    checkpoint_timeout_ms: int = 7000
    state_dir: str = ".weir-state"
    http_port: int = 0
    http_host: str = "127.0.0.1"
    log_level: str = "info"
    log_format: str = "text"
    batch_size: int = 2000  # records per consume() call
    slot_queue_records: int = 20000  # backpressure bound per slot
    slot_queue_bytes: int = 64 * 1024 * 1024  # and in bytes (inbox and held outputs)
    connect_timeout_s: float = 15.0
    broker_timeout_s: float = 300.0  # Kafka unreachable this long: exit 3 (restart me)
    shutdown_timeout_s: float = 30.0
    # How often the configs of the topics the job writes are read again (size and
    # timestamp limits can change under a running worker).
    topic_config_refresh_s: float = 30.0
    # Flink's restart strategies, for unexpected errors in a slot (not bad records):
    restart_strategy: str = "exponential-delay"  # or fixed-delay, none
    restart_attempts: int = 5
    restart_delay_ms: int = 1000  # fixed delay, or the first exponential one (doubling, max 60 s)
    standby_replicas: int = 0  # 1: tail every other partition's changelog for fast failover
    # static: rejoin under group.instance.id = worker id (KIP-345), no rebalance on restart
    membership: str = "dynamic"
    # Start even though the group holds keyed state no stateful operator of the job
    # claims (renamed or removed operators): that state is deleted (`weir.service.upgrade`).
    allow_state_reset: bool = False
    # Old operator name -> new: copy the old one's keyed state to the new name at start.
    rename_state: dict[str, str] = field(default_factory=dict)
    kafka: dict[str, str] = field(default_factory=dict)
    # The schema registry of the job's Avro/Protobuf/JSON Schema serdes, and its client's
    # further settings (passthrough, like ``kafka``).
    schema_registry_url: str | None = None
    schema_registry: dict[str, str] = field(default_factory=dict)

    @property
    def registry(self) -> dict[str, str] | None:
        """The schema registry client settings (``url`` first), None without a URL."""
        if not self.schema_registry_url:
            return None
        return {"url": self.schema_registry_url, **self.schema_registry}

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log or serve: librdkafka values hidden."""
        out = asdict(self)
        out["kafka"] = {k: "***" for k in self.kafka}
        out["schema_registry"] = {k: "***" for k in self.schema_registry}
        return out


_INT_RANGES = {
    "slots": (1, 1024),
    "processes": (1, 256),
    "checkpoint_interval_ms": (10, 3_600_000),
    "checkpoint_timeout_ms": (100, 3_600_000),
    "http_port": (0, 65535),
    "batch_size": (1, 1_000_000),
    "slot_queue_records": (1, 100_000_000),
    "slot_queue_bytes": (1024 * 1024, 64 * 1024**3),
    "restart_attempts": (0, 1_000_000),
    "restart_delay_ms": (0, 3_600_000),
    "standby_replicas": (0, 1),
}
_FLOAT_RANGES = {
    "connect_timeout_s": (0.1, 3600.0),
    "shutdown_timeout_s": (0.1, 3600.0),
    "topic_config_refresh_s": (1.0, 86400.0),
    "broker_timeout_s": (1.0, 86400.0),
}
_BOOLS = {"allow_state_reset"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_CHOICES = {
    "guarantee": GUARANTEES,
    "log_level": LOG_LEVELS,
    "log_format": LOG_FORMATS,
    "restart_strategy": RESTART_STRATEGIES,
    "membership": MEMBERSHIPS,
}
PASSTHROUGH = ("kafka", "schema_registry")  # tables of client settings passed as they are
FIELDS = {f.name for f in fields(WorkerConfig)} - {*PASSTHROUGH, "rename_state"}
_OPERATOR_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # as `weir.operators.api` accepts


def _renames(items: list[str], where: str, into: dict[str, str]) -> None:
    """``OLD=NEW`` operator renames into ``into``; each name as the job API accepts it."""
    for item in items:
        old, sep, new = (part.strip() for part in str(item).partition("="))
        if not sep or not _OPERATOR_NAME.match(old) or not _OPERATOR_NAME.match(new):
            raise ConfigError(f"{where} {item!r}: expected OLD=NEW (two operator names)")
        if old == new or into.get(old, new) != new:
            raise ConfigError(f"{where} {item!r}: renames {old!r} to itself or twice")
        into[old] = new


def _convert(name: str, value: Any, where: str, typed: bool = False) -> Any:
    """Check one value and convert it: text from flags and env, typed values from TOML.

    ``where`` names the value as the user wrote it (``--slots``, ``WEIR_SLOTS``, ...).
    """
    if name in _INT_RANGES:
        lo, hi = _INT_RANGES[name]
        try:
            if isinstance(value, bool | float) or (typed and not isinstance(value, int)):
                raise ValueError
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r}: expected a whole number") from None
        if not lo <= number <= hi:
            raise ConfigError(f"{where}={number}: expected a number from {lo} to {hi}")
        return number
    if name in _FLOAT_RANGES:
        lo, hi = _FLOAT_RANGES[name]
        try:
            if isinstance(value, bool) or (typed and not isinstance(value, int | float)):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r}: expected a number of seconds") from None
        if not lo <= number <= hi:
            raise ConfigError(f"{where}={number}: expected seconds from {lo} to {hi}")
        return number
    if name in _BOOLS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if not typed else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if not isinstance(value, str):
        raise ConfigError(f"{where}={value!r}: expected a string")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(f"{where}={value!r}: expected one of {', '.join(_CHOICES[name])}")
    if name == "schema_registry_url" and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where}={value!r}: expected an http:// or https:// URL")
    if name in ("bootstrap", "worker_id", "state_dir", "http_host") and not value.strip():
        raise ConfigError(f"{where} is empty: expected a value")
    if name == "bootstrap":
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"{where}={value!r}: expected host:port[,host:port...]")
    return value


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    return data


def load_config(flags: dict[str, Any], environ: dict[str, str] | None = None) -> WorkerConfig:
    """Build the config from parsed flags (``None`` = not given), env and ``flags['config']``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    registry: dict[str, str] = {}
    renames: dict[str, str] = {}

    config_path = flags.get("config") or environ.get("WEIR_CONFIG")
    if config_path:
        for key, value in _read_toml(config_path).items():
            name = key.replace("-", "_")
            if name == "kafka":
                if not isinstance(value, dict):
                    raise ConfigError("config file key kafka: expected a table of librdkafka keys")
                kafka.update({str(k): str(v) for k, v in value.items()})
            elif name.startswith("kafka."):
                kafka[name[len("kafka.") :]] = str(value)
            elif name == "schema_registry":
                if not isinstance(value, dict):
                    raise ConfigError(
                        "config file key schema_registry: expected a table of registry client keys"
                    )
                registry.update({str(k): str(v) for k, v in value.items()})
            elif name == "rename_state":
                items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else value
                if not isinstance(items, list):
                    raise ConfigError(
                        f'config file key {key!r}: expected a table old = "new" or a list'
                    )
                _renames(items, f"config file key {key!r}:", renames)
            elif name in FIELDS:
                values[name] = _convert(name, value, f"config file key {key!r}", typed=True)
            else:
                raise ConfigError(
                    f"config file key {key!r} is unknown; expected one of "
                    f"{', '.join(sorted(n.replace('_', '-') for n in FIELDS))}, rename-state,"
                    " kafka.* or [schema_registry]"
                )

    for env_key, value in environ.items():
        if not env_key.startswith("WEIR_") or env_key == "WEIR_CONFIG":
            continue
        name = env_key[len("WEIR_") :].lower()
        if name.startswith("kafka_"):
            kafka[name[len("kafka_") :].replace("_", ".")] = value
        elif name == "rename_state":
            renames.clear()  # the environment replaces the file's list
            _renames([i for i in value.split(",") if i.strip()], env_key, renames)
        elif name in FIELDS:
            values[name] = _convert(name, value, env_key)
        elif name.startswith("schema_registry_"):
            registry[name[len("schema_registry_") :].replace("_", ".")] = value

    for name, value in flags.items():
        if name in FIELDS and value is not None:
            values[name] = _convert(name, value, "--" + name.replace("_", "-"))
    if flags.get("rename_state"):
        renames.clear()  # flags replace the environment's list
        _renames(flags["rename_state"], "--rename-state", renames)
    for item in flags.get("kafka") or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"flag --kafka {item!r}: expected KEY=VALUE (a librdkafka setting)")
        kafka[key] = value
    for item in flags.get("schema_registry") or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"flag --schema-registry {item!r}: expected KEY=VALUE (a registry client setting)"
            )
        registry[key] = value
    if "url" in registry:
        raise ConfigError(
            "schema registry setting 'url': give it as --schema-registry-url"
            " (WEIR_SCHEMA_REGISTRY_URL, or schema_registry_url in the config file)"
        )

    return WorkerConfig(**values, rename_state=renames, kafka=kafka, schema_registry=registry)


def check_formats(plan: PhysicalPlan, registry: Mapping[str, str] | None) -> None:
    """A job whose formats need a schema registry fails at start, with one line, when
    the worker has none, instead of dead-lettering every record."""
    if registry is not None:
        return
    for where, serde in plan.formats:
        if needs_registry(serde):
            raise ConfigError(
                f"{where}={serde!r} needs a schema registry; set --schema-registry-url"
                " (WEIR_SCHEMA_REGISTRY_URL, or schema_registry_url in the config file)"
            )
