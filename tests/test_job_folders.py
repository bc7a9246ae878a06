"""A job's folder may hold helper modules of any name but ``weir``: Weir's runtime lives
under ``weir`` (``weir.service``, ``weir.operators``, ``weir.state``), so a job's own
``service.py``, ``operators.py`` or ``state/`` package is the one the job imports —
loaded in this process, where Weir's runtime is already imported, and by ``weir``
itself. A folder with its own ``weir`` module is refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from weir.service.exceptions import JobLoadError
from weir.service.jobfile import load_job
from weir.testing import JobTester

JOB = """
import service  # the folder's own service.py
from operators import double  # its operators.py
from state.labels import label  # its state/ package

from weir import Job

job = Job("helpers")
job.source("in").map(lambda r: label(double(service.parse(r)))).sink("out")
"""

HELPERS = {
    "service.py": "def parse(record):\n    return record['n']\n",
    "operators.py": "def double(n):\n    return 2 * n\n",
    "state/__init__.py": "",
    "state/labels.py": "def label(n):\n    return f'n={n}'\n",
}
NAMES = ("service", "operators", "state")


@pytest.fixture
def job_folder(tmp_path: Path):
    """A job file with helper modules named like Weir's internals; they are dropped from
    ``sys.modules`` afterwards, so no other test sees them."""
    for name, code in {"job.py": JOB, **HELPERS}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(code)
    yield tmp_path
    for module in [m for m in sys.modules if m.split(".")[0] in NAMES]:
        del sys.modules[module]


def test_a_job_imports_its_own_service_operators_and_state_modules(job_folder):
    tester = JobTester(load_job(str(job_folder / "job.py")))
    tester.send("in", {"n": 21})
    assert tester.output("out") == ["n=42"]
    assert Path(sys.modules["service"].__file__).parent == job_folder


def test_weir_loads_such_a_job_from_its_folder(job_folder):
    done = subprocess.run(
        [sys.executable, "-m", "weir.service.cli", "plan", "job.py"],
        cwd=job_folder, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sink topics: out" in done.stdout


def test_a_folder_with_its_own_weir_module_is_refused_in_one_line(tmp_path):
    (tmp_path / "weir.py").write_text("HELPER = 1\n")
    (tmp_path / "job.py").write_text("from weir import Job\njob = Job('x')\n")
    with pytest.raises(JobLoadError, match=r"has its own weir\.py, which Weir's package") as info:
        load_job(str(tmp_path / "job.py"))
    assert "\n" not in str(info.value)
    done = subprocess.run(
        [sys.executable, "-m", "weir.service.cli", "plan", str(tmp_path / "job.py")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
