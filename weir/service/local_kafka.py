"""A single-node Apache Kafka broker (KRaft, combined broker+controller) run from Maven jars.

Weir's integration and fault tests need a real broker with transactions and consumer
groups, and developers and CI machines do not always have a Docker engine. This module
runs Apache Kafka's own broker as a plain JVM process: the jars are resolved once with
Maven from ``kafka/pom.xml`` (package data next to this module, so an installed wheel
has it too) into a cache directory, storage is formatted with
Kafka's StorageTool, and the broker is started in its own process group with a config
tuned for one node (replication factor 1 everywhere, few internal-topic partitions, no
initial rebalance delay). ``start()`` returns only once the broker answers metadata
requests and has its transaction and group coordinators up, so callers never race
broker startup.

``cli_start``/``cli_stop`` back the ``weir kafka start|stop`` subcommand: a detached
broker that outlives the command, recorded in a state file inside its data directory.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

KAFKA_FILES = Path(__file__).resolve().parent / "kafka"
KAFKA_POM = KAFKA_FILES / "pom.xml"
LOG4J_CONFIG = KAFKA_FILES / "log4j2.properties"

STATE_FILE = "weir-kafka.json"
DEFAULT_CLI_PORT = 9092

_NODE_ID = 1
_COMPLETE_MARKER = ".complete"
_LOG_DIR = "kafka-logs"
_SERVER_LOG = "server.log"
_CONSOLE_LOG = "broker.out"
_JVM_OPTS = ("-Xms256m", "-Xmx1g", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true")
# The storage formatter runs for well under a second: C1-only JIT and serial GC start faster.
_TOOL_JVM_OPTS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
_TAIL_LINES = 6


class LocalKafkaError(RuntimeError):
    """The local broker could not be resolved, started or stopped; the message is one line."""


def kafka_version() -> str:
    """The Kafka version pinned in ``kafka/pom.xml`` (the single source of truth)."""
    try:
        root = ET.parse(KAFKA_POM).getroot()
    except (OSError, ET.ParseError) as exc:
        raise LocalKafkaError(f"cannot read {KAFKA_POM}: {exc}") from exc
    node = root.find("{http://maven.apache.org/POM/4.0.0}properties/{*}kafka.version")
    if node is None or not (node.text or "").strip():
        raise LocalKafkaError(f"{KAFKA_POM} has no <kafka.version> property")
    return node.text.strip()


def default_cache_dir() -> Path:
    """``$WEIR_CACHE_DIR`` if set, else ``weir`` in the user's cache directory
    (``$XDG_CACHE_HOME``, default ``~/.cache``): one copy of the jars per user, for
    checkouts and installed wheels alike."""
    env = os.environ.get("WEIR_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "weir"


def resolve_jars(cache_dir: Path | None = None) -> Path:
    """Return the directory holding the broker's jars, resolving them with Maven if needed.

    The copy is keyed by the Kafka version and validated by a marker that records the
    pom's hash, so editing the pom (e.g. a logging dependency) re-resolves. A file lock
    serialises concurrent resolvers (parallel test workers).
    """
    version = kafka_version()
    home = (cache_dir or default_cache_dir()) / f"kafka-{version}"
    libs = home / "libs"
    marker = home / _COMPLETE_MARKER
    pom_hash = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if libs.is_dir() and marker.is_file() and marker.read_text().strip() == pom_hash:
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError(
                f"mvn not found on PATH; it is needed once to download Kafka {version} into {libs}"
            )
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn, "-B", "-q", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(f"mvn timed out resolving Kafka {version}") from exc
        if done.returncode != 0 or not any(partial.glob("kafka_*.jar")):
            raise LocalKafkaError(
                f"mvn failed to resolve Kafka {version} (exit {done.returncode}): "
                f"{_tail_text(done.stdout)}"
            )
        marker.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        marker.write_text(pom_hash + "\n")
    return libs


class LocalKafka:
    """One single-node KRaft broker process with its own ports and data directory.

    ``port=0`` picks free ports for both the client and the controller listener. Without
    ``data_dir`` a temporary directory is created and removed again by ``stop()``; with
    one, an already-formatted directory is reused (topics survive restarts). The JVM runs
    in its own session and is not tied to this object's lifetime (that is what lets
    ``cli_start`` detach it): call ``stop()`` or use the instance as a context manager.

    ``proxied=(listen, advertised)`` adds a second listener on ``127.0.0.1:listen`` that
    advertises ``127.0.0.1:advertised``: clients bootstrapped at ``advertised`` are handed
    that address for the broker too, so a proxy listening there (network fault tests)
    carries every connection they make, while ``bootstrap`` stays direct.
    """

    def __init__(
        self,
        port: int = 0,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        proxied: tuple[int, int] | None = None,
    ) -> None:
        self._requested_port = port
        self._proxied = proxied
        self._port = 0
        self._data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._owns_data_dir = False
        self._cache_dir = cache_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._cluster_id = ""

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the running broker."""
        if self._proc is None:
            raise LocalKafkaError("broker is not started")
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker JVM, or None before start / after stop."""
        return self._proc.pid if self._proc is not None else None

    @property
    def data_dir(self) -> Path | None:
        """Directory holding server.properties, the log dirs and the broker's log files."""
        return self._data_dir

    @property
    def config_path(self) -> Path:
        """The broker's server.properties (its path is on the JVM's command line)."""
        if self._data_dir is None:
            raise LocalKafkaError("broker has no data directory yet")
        return self._data_dir / "server.properties"

    def start(self, timeout: float = 60.0) -> str:
        """Start the broker and return its bootstrap string once it serves clients.

        ``timeout`` bounds formatting, startup and readiness; a first-time Maven download
        of the jars comes before it and has its own limit.
        """
        if self._proc is not None:
            raise LocalKafkaError("broker is already started")
        java = _find_java()
        libs = resolve_jars(self._cache_dir)
        deadline = time.monotonic() + timeout
        self._port = self._requested_port or _free_port()
        for wanted in (self._requested_port, *(self._proxied or ())[:1]):
            if wanted and not _port_is_free(wanted):
                raise LocalKafkaError(f"port {wanted} on 127.0.0.1 is already in use")
        taken = {self._port, *(self._proxied or ())}
        controller_port = _free_port(exclude=taken)
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="weir-kafka-")).resolve()
            self._owns_data_dir = True
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(
                _server_properties(self._data_dir, self._port, controller_port, self._proxied)
            )
            classpath = f"{libs}{os.sep}*"
            self._cluster_id = self._format_storage(java, classpath, deadline)
            self._spawn(java, classpath)
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the broker, SIGKILL it after ``timeout``, and remove a temporary data dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._owns_data_dir = False

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no controlled shutdown); the data dir stays."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _format_storage(self, java: str, classpath: str, deadline: float) -> str:
        """Format the log dir once (reusing its cluster id later) and return the cluster id."""
        assert self._data_dir is not None
        meta = self._data_dir / _LOG_DIR / "meta.properties"
        if meta.is_file():
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
        cluster_id = _random_cluster_id()
        cmd = [
            java, *_TOOL_JVM_OPTS, *_log_opts(self._data_dir), "-cp", classpath,
            "kafka.tools.StorageTool",
            "format", "-t", cluster_id, "-c", str(self.config_path),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError("timed out formatting Kafka storage") from exc
        if done.returncode != 0:
            raise LocalKafkaError(f"formatting Kafka storage failed: {_tail_text(done.stdout)}")
        return cluster_id

    def _spawn(self, java: str, classpath: str) -> None:
        assert self._data_dir is not None
        cmd = [
            java, *_JVM_OPTS, *_log_opts(self._data_dir), "-cp", classpath, "kafka.Kafka",
            str(self.config_path),
        ]  # fmt: skip
        with open(self._data_dir / _CONSOLE_LOG, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                start_new_session=True,
            )

    def _wait_ready(self, deadline: float) -> None:
        """Wait for the client port, then metadata of *our* cluster, then the coordinators."""
        while not _accepts_connections(self._port):
            self._check_alive(deadline, "opening its client port")
            time.sleep(0.05)
        quiet = {"bootstrap.servers": self.bootstrap, "log_level": 0}  # retries are expected
        admin = AdminClient(quiet)
        while True:
            self._check_alive(deadline, "answering metadata requests")
            with contextlib.suppress(KafkaException):
                md = admin.list_topics(timeout=min(2.0, _remaining(deadline)))
                if md.cluster_id == self._cluster_id and md.brokers:
                    break
                if md.cluster_id and md.cluster_id != self._cluster_id:
                    raise LocalKafkaError(
                        f"port {self._port} is served by another Kafka cluster ({md.cluster_id})"
                    )
            time.sleep(0.1)

        # Transaction and group coordinators create their internal topics on first use;
        # doing it here keeps that latency out of the first test. Both run concurrently.
        def describe_group() -> Future:
            timeout = min(5.0, _remaining(deadline))
            return admin.describe_consumer_groups(["weir-ready"], request_timeout=timeout)[
                "weir-ready"
            ]

        described = describe_group()
        producer = Producer({**quiet, "transactional.id": f"weir-ready-{uuid.uuid4()}"})
        while True:
            self._check_alive(deadline, "initialising a transactional producer")
            try:
                producer.init_transactions(min(5.0, _remaining(deadline)))
                break
            except KafkaException:
                time.sleep(0.1)
        del producer  # nothing was produced: destroying it has nothing to wait for
        while True:
            try:
                described.result()
                break
            except KafkaException:
                self._check_alive(deadline, "starting the group coordinator")
                time.sleep(0.1)
                described = describe_group()

    def _check_alive(self, deadline: float, doing: str) -> None:
        assert self._proc is not None and self._data_dir is not None
        code = self._proc.poll()
        if code is not None:
            raise LocalKafkaError(
                f"Kafka broker exited with code {code} before {doing}: {self._log_tail()}"
            )
        if time.monotonic() >= deadline:
            raise LocalKafkaError(f"Kafka broker timed out {doing}: {self._log_tail()}")

    def _log_tail(self) -> str:
        assert self._data_dir is not None
        parts = []
        for name in (_CONSOLE_LOG, _SERVER_LOG):
            path = self._data_dir / name
            if path.is_file() and path.stat().st_size:
                parts.append(f"{name}: {_tail_text(_read_tail(path))}")
        return " || ".join(parts) or f"no log output in {self._data_dir}"


def cli_start(port: int = DEFAULT_CLI_PORT, data_dir: Path | None = None) -> int:
    """``weir kafka start``: run a detached broker, record it, print its bootstrap."""
    data_dir = Path(data_dir) if data_dir is not None else default_cache_dir() / f"broker-{port}"
    running = _recorded_broker(data_dir)
    if running is not None:
        print(running["bootstrap"])
        return 0
    broker = LocalKafka(port=port, data_dir=data_dir)
    try:
        bootstrap = broker.start()
        state = {"pid": broker.pid, "port": port, "bootstrap": bootstrap}
        (data_dir / STATE_FILE).write_text(json.dumps(state) + "\n")
    except (LocalKafkaError, OSError) as exc:
        broker.stop()
        print(f"weir kafka: {exc}", file=sys.stderr)
        return 1
    print(bootstrap)
    return 0


def cli_stop(data_dir: Path | None = None, port: int | None = None) -> int:
    """``weir kafka stop``: stop the broker ``cli_start`` recorded in ``data_dir`` (or for
    ``port``); with neither, every broker it recorded that still runs."""
    if data_dir is None and port is None:
        found = sorted(d for d in default_cache_dir().glob("broker-*") if _recorded_broker(d))
        if not found:
            print(f"weir kafka: no broker running under {default_cache_dir()}", file=sys.stderr)
            return 1
        return max(cli_stop(d) for d in found)
    if data_dir is None:
        data_dir = default_cache_dir() / f"broker-{port}"
    data_dir = Path(data_dir)
    running = _recorded_broker(data_dir)
    if running is None:
        print(f"weir kafka: no broker running in {data_dir}", file=sys.stderr)
        return 1
    pid = int(running["pid"])
    try:
        _terminate(pid, timeout=30.0)
    except LocalKafkaError as exc:
        print(f"weir kafka: {exc}", file=sys.stderr)
        return 1
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    print(f"stopped Kafka broker {running['bootstrap']} (pid {pid})")
    return 0


def _recorded_broker(data_dir: Path) -> dict | None:
    """The state file's content if its pid is still a broker running from ``data_dir``."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    config = str((data_dir / "server.properties").resolve())
    cmdline = _cmdline(pid)
    if _pid_running(pid) and config in cmdline and "kafka.Kafka" in cmdline:
        return state
    return None


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM a process that is not our child, then SIGKILL it; wait until it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_running(pid):
                return
            time.sleep(0.1)
    raise LocalKafkaError(f"process {pid} did not exit after SIGKILL")


def _pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a detached broker may await reaping)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return "Z" not in _ps(pid, "stat")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return "" if Path("/proc/self").exists() else _ps(pid, "command")
    except OSError:
        return ""


def _ps(pid: int, field: str) -> str:
    done = subprocess.run(
        ["ps", "-ww", "-o", f"{field}=", "-p", str(pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def _server_properties(
    data_dir: Path, port: int, controller_port: int, proxied: tuple[int, int] | None
) -> str:
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
    advertised = f"PLAINTEXT://127.0.0.1:{port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if proxied is not None:
        listeners += f",PROXIED://127.0.0.1:{proxied[0]}"
        advertised += f",PROXIED://127.0.0.1:{proxied[1]}"
        protocols += ",PROXIED:PLAINTEXT"
    settings = {
        "process.roles": "broker,controller",
        "node.id": _NODE_ID,
        # A static one-voter quorum: unlike a dynamic (--standalone) quorum it does not
        # persist the controller endpoint, so a reused data dir may get a new port.
        "controller.quorum.voters": f"{_NODE_ID}@127.0.0.1:{controller_port}",
        "listeners": listeners,
        "advertised.listeners": advertised,
        "listener.security.protocol.map": protocols,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": data_dir / _LOG_DIR,
        "num.partitions": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 4,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "share.coordinator.state.topic.num.partitions": 4,
        "group.initial.rebalance.delay.ms": 0,
        # A dead worker's open transaction blocks read_committed readers and state
        # restores until the broker aborts it: look for expired ones every second, not 10.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": 1000,
        # Lets fault tests use short consumer session timeouts (the default floor is 6 s).
        "group.min.session.timeout.ms": 1000,
        "log.segment.bytes": 16 * 1024 * 1024,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 1,
        # Faster registration/unfencing of the broker with its co-located controller.
        "broker.heartbeat.interval.ms": 500,
    }
    header = "# Written by weir/service/local_kafka.py for a single-node development broker.\n"
    return header + "".join(f"{key}={value}\n" for key, value in settings.items())


def _log_opts(data_dir: Path) -> list[str]:
    return [f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", f"-Dkafka.logs.dir={data_dir}"]


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("java not found (set JAVA_HOME or put java 17+ on PATH)")
    return java


def _random_cluster_id() -> str:
    """A Kafka cluster id: a random UUID as 22 characters of unpadded base64url.

    Like Kafka's own ``Uuid.randomUuid`` it never starts with "-", which command-line
    parsers (StorageTool's included) would take for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _free_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java sets SO_REUSEADDR too, so TIME_WAIT leftovers of a previous broker are fine.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _remaining(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def _read_tail(path: Path, size: int = 16384) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")


def _tail_text(text: str) -> str:
    """The last few non-blank lines of ``text`` joined into one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL_LINES:])[-1500:] or "(no output)"
