"""A real schema registry for the serde tests: Apicurio Registry, run from Maven Central.

Steps (`resolve_registry`, then `SchemaRegistry.start`):

1. Build once: ``deploy/schema-registry/pom.xml`` is copied into the cache
   (``<cache>/apicurio-registry-<version>``, beside the broker's jars) and
   ``mvn package`` there runs Quarkus' build step over Apicurio's app jar (the
   pom says why it takes that). A marker holding the pom's hash makes a changed
   pom rebuild; a file lock serialises concurrent builders.
2. Start: ``java -jar <runner>`` on a free port, in-memory storage, in its own
   process group; wait (bounded) until ``/apis/ccompat/v6/subjects`` answers.
3. Stop: SIGTERM to that process group, SIGKILL after a grace period — only the
   process this module started, by its PID.

The session fixture ``schema_registry`` yields the URL of the Confluent-compatible
API (``http://127.0.0.1:PORT/apis/ccompat/v6``); it skips, naming why, only when
the registry cannot be fetched or built here (no ``mvn``, no network).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port
from weir.service.local_kafka import default_cache_dir

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "deploy" / "schema-registry" / "pom.xml"
RUNNER = "weir-schema-registry-1-runner.jar"
API = "/apis/ccompat/v6"


class RegistryUnavailable(RuntimeError):
    """The registry could not be fetched or built here (the fixture skips with this)."""


def apicurio_version() -> str:
    node = (
        ET.parse(POM)
        .getroot()
        .find("{http://maven.apache.org/POM/4.0.0}properties/{*}apicurio.version")
    )
    return node.text.strip()


def resolve_registry(cache_dir: Path | None = None) -> Path:
    """Step 1: the runner jar, built once into the cache."""
    home = (cache_dir or default_cache_dir()) / f"apicurio-registry-{apicurio_version()}"
    runner = home / "target" / RUNNER
    marker = home / ".complete"
    pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if runner.is_file() and marker.is_file() and marker.read_text().strip() == pom_hash:
            return runner
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RegistryUnavailable("mvn not found on PATH; it builds Apicurio Registry once")
        marker.unlink(missing_ok=True)
        shutil.rmtree(home / "target", ignore_errors=True)
        shutil.copy(POM, home / "pom.xml")
        cmd = [mvn, "-B", "-q", "-f", str(home / "pom.xml"), "package", "-DskipTests"]
        try:
            done = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200
            )
        except subprocess.TimeoutExpired:
            raise RegistryUnavailable("mvn timed out building Apicurio Registry") from None
        if done.returncode != 0 or not runner.is_file():
            tail = " | ".join(done.stdout.strip().splitlines()[-5:])
            raise RegistryUnavailable(f"mvn failed to build Apicurio Registry: {tail}")
        marker.write_text(pom_hash + "\n")
        return runner


class SchemaRegistry:
    """One Apicurio Registry process (steps 2 and 3)."""

    def __init__(self, runner: Path, log_path: Path) -> None:
        self.runner = runner
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    def start(self, timeout: float = 180.0) -> str:
        java = shutil.which("java") or "java"
        cmd = [
            java, "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
            "-jar", str(self.runner),
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.runner.parent,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the registry exited ({self.proc.returncode}): {self._tail()}")
            if self._answers():
                return self.url
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the registry did not answer within {timeout:.0f}s: {self._tail()}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, grace: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        return ""


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running registry's Confluent-compatible API, for the session."""
    try:
        runner = resolve_registry()
    except RegistryUnavailable as exc:
        pytest.skip(f"no schema registry: {exc}")
    registry = SchemaRegistry(runner, tmp_path_factory.mktemp("registry") / "registry.log")
    registry.start()
    try:
        yield registry.url
    finally:
        registry.stop()
