"""Loading a job file: a Python module that defines ``job = Job(...)``.

The job's folder is importable while it loads, so a job can import helper modules
next to it — any name but ``weir``, the one top-level name Weir takes (its runtime
lives under it, as ``weir.service``, ``weir.operators`` and ``weir.state``).
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

import weir
from weir.operators import Job
from weir.operators.exceptions import JobDefinitionError
from weir.service.exceptions import JobLoadError


def load_job(path: str) -> Job:
    """Import ``path`` and return its ``job``; every failure is one `JobLoadError` line."""
    file = Path(path)
    if not file.is_file():
        raise JobLoadError(f"job file {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"weir_job_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise JobLoadError(f"job file {path}: not a Python module (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    _check_names(file.resolve().parent)
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


def _check_names(folder: Path) -> None:
    """Refuse a job folder with a module of its own called ``weir``: Weir's package,
    already imported, would hide it from the job (a checkout's own ``weir/`` is fine)."""
    ours = Path(weir.__file__).resolve().parent
    for own in (folder / "weir.py", folder / "weir" / "__init__.py"):
        if own.is_file() and own.resolve().parent != ours:
            raise JobLoadError(
                f"job folder {folder} has its own {own.relative_to(folder)}, which Weir's"
                " package `weir` hides from the job; rename it"
            )


def _user_line(exc: BaseException, file: Path) -> str:
    """``:LINE`` of the innermost frame in the job file, if any."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve() == file.resolve():
            return f":{frame.lineno}"
    return ""
