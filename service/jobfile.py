"""Loading a job file: a Python module that defines ``job = Job(...)``."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from operators import Job
from operators.exceptions import JobDefinitionError
from service.exceptions import JobLoadError


def load_job(path: str) -> Job:
    """Import ``path`` and return its ``job``; every failure is one `JobLoadError` line."""
    file = Path(path)
    if not file.is_file():
        raise JobLoadError(f"job file {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"weir_job_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise JobLoadError(f"job file {path}: not a Python module (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.resolve().parent))  # so a job can import its helpers
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise JobLoadError(f"job file {path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except JobDefinitionError as exc:
        raise JobLoadError(f"job file {path}: {exc}") from None
    except Exception as exc:
        line = _user_line(exc, file)
        raise JobLoadError(f"job file {path}{line}: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(file.resolve().parent))
    job = getattr(module, "job", None)
    if not isinstance(job, Job):
        found = "nothing" if job is None else type(job).__name__
        raise JobLoadError(
            f"job file {path} must define `job = Job(...)` at module level; found {found}"
        )
    try:
        job.validate()
    except JobDefinitionError as exc:
        raise JobLoadError(f"job file {path}: {exc}") from None
    return job


def _user_line(exc: BaseException, file: Path) -> str:
    """``:LINE`` of the innermost frame in the job file, if any."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve() == file.resolve():
            return f":{frame.lineno}"
    return ""
