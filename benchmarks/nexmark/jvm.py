"""The JVM peers (Flink, Kafka Streams): build their jars once, say what they are.

The sources live in ``benchmarks/nexmark/peers/jvm`` (a Maven project: ``common``,
``flink``, ``kstreams``, one shaded jar per engine). ``jar(engine)`` builds them with
``mvn -q package`` the first time and keeps the jars under
``benchmarks/.peers/jvm/<hash of the sources>/`` (gitignored), so a run after an edit of
the Java sources or a pom builds again and every other run starts at once.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "peers" / "jvm"
CACHE = HERE.parent / ".peers" / "jvm"
ENGINES = ("flink", "kstreams")
BUILD_TIMEOUT_S = 1800  # the first build downloads Flink's and Kafka's jars

_lock = threading.Lock()


class BuildError(RuntimeError):
    """The JVM peers could not be built (no Java or Maven, or the build failed)."""


def tools_missing() -> str | None:
    """What is missing to build and run the JVM peers, or None."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found on PATH" if missing else None


def source_hash() -> str:
    """A hash of every pom and source file: the cache key of the built jars."""
    digest = hashlib.sha256()
    for path in sorted(SOURCES.rglob("*")):
        rel = path.relative_to(SOURCES)
        if path.is_file() and "target" not in rel.parts:
            digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def jar(engine: str) -> Path:
    """The engine's shaded jar, built first if these sources were never built."""
    if engine not in ENGINES:
        raise ValueError(f"unknown JVM engine {engine!r} (expected one of {ENGINES})")
    with _lock:
        target = CACHE / source_hash()
        path = target / f"nexmark-{engine}.jar"
        if not all((target / f"nexmark-{e}.jar").exists() for e in ENGINES):
            _build(target)
        return path


def _build(target: Path) -> None:
    problem = tools_missing()
    if problem:
        raise BuildError(f"cannot build the JVM peers: {problem}")
    print(f"building the JVM peers in {SOURCES} (mvn -q package, once)…", flush=True)
    try:
        done = subprocess.run(
            ["mvn", "-q", "-B", "package"],
            cwd=SOURCES, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise BuildError(f"mvn package did not finish within {BUILD_TIMEOUT_S}s") from None
    if done.returncode != 0:
        raise BuildError(f"mvn package failed: {(done.stdout + done.stderr).strip()[-1500:]}")
    target.mkdir(parents=True, exist_ok=True)
    for engine in ENGINES:
        shutil.copy2(SOURCES / engine / "target" / f"nexmark-{engine}.jar", target)


def versions() -> dict[str, str]:
    """The engines' versions from the pom (what the jars are built from)."""
    pom = (SOURCES / "pom.xml").read_text()

    def prop(name: str) -> str:
        found = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", pom)
        return found.group(1) if found else "unknown"

    return {
        "flink": f"{prop('flink.version')} (flink-connector-kafka {prop('flink.kafka.version')})",
        "kafka-streams": prop("kafka.streams.version"),
        "java": java_version(),
    }


def java_version() -> str:
    if shutil.which("java") is None:
        return "not installed"
    try:
        out = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    first = out.strip().splitlines()[:1]
    found = re.search(r'"([^"]+)"', first[0]) if first else None
    return found.group(1) if found else "unknown"
