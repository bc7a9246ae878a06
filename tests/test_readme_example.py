"""README.md's first example job, tested as README's "Testing a job" shows: both code
blocks run as written, in one namespace, and every test function the second defines
passes."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python_block(section: str) -> str:
    """The first ```python block after the heading ``section``."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n", text.index(f"\n## {section}\n")) + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_readme_job_passes_the_readme_test():
    namespace: dict = {}
    exec(compile(_python_block("A job"), "README.md: A job", "exec"), namespace)
    exec(compile(_python_block("Testing a job"), "README.md: Testing a job", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert tests, "README's testing example defines no test"
    for test in tests:
        test()
