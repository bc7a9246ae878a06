"""The wheel is self-contained: built from the repository and installed into a fresh
virtualenv (pinned by constraints.txt), run from a directory with no checkout on
``sys.path``, Weir works as a user who only has the wheel gets it.

The default run checks what needs no broker (``weir --version``, the wheel's contents
and metadata, a job folder with its own ``service.py`` planned and tested with
`weir.testing.JobTester`); the slow run adds, with only the installed package, ``weir kafka
start``, ``weir demo`` and ``weir run`` on that broker, and ``weir kafka stop``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.kafka_fixture import consume_all, produce_json
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

JOB = """
from service import double  # the folder's own service.py, not Weir's runtime

from weir import Job

job = Job("wheel-job")
job.source("numbers").map(lambda r: {"n": double(r["n"])}).sink("doubled")
"""
HELPER = "def double(n):\n    return 2 * n\n"
TESTER = """
from weir.testing import JobTester

tester = JobTester.from_file("job.py")
tester.send("numbers", {"n": 21})
print(tester.output("doubled"))
"""


class Installed:
    """The built wheel, the fresh virtualenv it is installed in, and a job folder."""

    def __init__(self, wheel: Path, venv: Path, folder: Path) -> None:
        self.wheel, self.venv, self.folder = wheel, venv, folder
        # No checkout on the path: a plain environment, run from the job's folder.
        self.env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        self.env.update({k: os.environ[k] for k in ("HOME", "JAVA_HOME") if k in os.environ})

    def run(self, *argv: str, timeout: float = 120) -> str:
        done = subprocess.run(
            argv, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "Traceback" not in output, f"{argv}: {output}"
        return done.stdout

    def weir(self, *args: str, timeout: float = 120) -> str:
        return self.run(str(self.venv / "bin" / "weir"), *args, timeout=timeout)

    def python(self, code: str) -> str:
        return self.run(str(self.venv / "bin" / "python"), "-c", code)


def _check(argv: list, timeout: float) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Copy what a build reads, build the wheel, install it with its pinned
    dependencies into a fresh virtualenv."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for name in ("weir", "examples"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _check([*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(source)], 600)
    (wheel,) = (work / "dist").glob("weir-*.whl")
    venv = work / "venv"
    _check([sys.executable, "-m", "venv", str(venv)], 300)
    install = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    _check([*install, "install", "-c", str(ROOT / "constraints.txt"), str(wheel)], 600)
    folder = work / "job"
    folder.mkdir()
    (folder / "job.py").write_text(JOB)
    (folder / "service.py").write_text(HELPER)
    return Installed(wheel, venv, folder)


def test_constraints_pin_every_dependency_inside_its_range():
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    pinned = {canonicalize_name(name): Version(v) for name, v in pins.items()}
    extras = PROJECT["optional-dependencies"]
    for spec in [*PROJECT["dependencies"], *extras["schemas"], *extras["test"]]:
        wanted = Requirement(spec)
        if wanted.name == PROJECT["name"]:  # weir[schemas]: Weir's own extra, listed above
            continue
        assert wanted.specifier and "==" not in str(wanted.specifier), f"{spec}: want a range"
        version = pinned.get(canonicalize_name(wanted.name))
        assert version is not None, f"constraints.txt does not pin {wanted.name}"
        assert wanted.specifier.contains(version), f"{wanted.name}=={version} is outside {spec}"


def test_the_wheel_carries_weir_and_nothing_else(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    info = f"weir-{PROJECT['version']}.dist-info"
    assert {n.split("/")[0] for n in names} == {"weir", info}, "one top-level name"
    for data in ("weir/service/kafka/pom.xml", "weir/service/kafka/log4j2.properties",
                 "weir/examples/sensor_stats.py", f"{info}/licenses/LICENSE"):  # fmt: skip
        assert data in names, data
    metadata = zipfile.ZipFile(installed.wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    requires = re.findall(r"^Requires-Dist: ([^;\n]+)$", metadata, re.M)
    runtime = [r for r in requires if "extra ==" not in r]
    assert runtime and all("==" not in r and "<" in r for r in runtime), runtime
    license_text = zipfile.ZipFile(installed.wheel).read(f"{info}/licenses/LICENSE").decode()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def test_the_installed_weir_runs_without_a_checkout(installed):
    assert installed.weir("--version").strip() == f"weir {PROJECT['version']}"
    where = installed.python("import weir; print(weir.__file__)")
    assert Path(where.strip()).is_relative_to(installed.venv), where
    version = installed.python(
        "from weir.service.local_kafka import KAFKA_POM, LOG4J_CONFIG, kafka_version\n"
        "assert LOG4J_CONFIG.is_file()\nprint(kafka_version())"
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", version), version
    plan = installed.weir("plan", "job.py")
    assert "source topics: numbers" in plan and "sink topics: doubled" in plan
    assert installed.python(TESTER).strip() == "[{'n': 42}]"


@pytest.mark.slow
def test_the_local_broker_the_demo_and_a_job_from_the_wheel(installed):
    """As the README's Running section, with only the wheel: a local broker, the demo
    on it (a fresh broker: the demo reads its topics from the start), the helper job."""
    port, data = free_port(), installed.folder / "broker"
    bootstrap = installed.weir("kafka", "start", "--port", str(port), "--dir", str(data),
                               timeout=600).strip()  # fmt: skip
    try:
        assert bootstrap == f"127.0.0.1:{port}"
        demo = installed.weir("demo", "--bootstrap", bootstrap, "--count", "300", timeout=300)
        assert "committed window results from 'sensor-stats'" in demo, demo  # all: exit 0
        for topic in ("numbers", "doubled"):
            created = installed.weir("topics", "create", topic, "--bootstrap", bootstrap)
            assert f"created topic {topic}" in created
        worker = subprocess.Popen(
            [str(installed.venv / "bin" / "weir"), "run", "job.py", "--bootstrap", bootstrap,
             "--worker-id", "w1", "--state-dir", str(installed.folder / "state"),
             "--checkpoint-interval-ms", "200"],
            cwd=installed.folder, env=installed.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            produce_json(bootstrap, "numbers", [{"n": n} for n in range(50)])
            got = consume_all(bootstrap, "doubled", expected=50, timeout=120)
            worker.send_signal(signal.SIGTERM)
            output, _ = worker.communicate(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        assert sorted(r["value"]["n"] for r in got) == [2 * n for n in range(50)]
        assert worker.returncode == 0 and "Traceback" not in output, output
    finally:
        stopped = installed.weir("kafka", "stop", "--dir", str(data), timeout=120)
    assert f"stopped Kafka broker {bootstrap}" in stopped
