"""Operators with several inputs, without a broker: the plans they compile to, what
`weir plan` shows of them, and the definition-time errors a job author sees.
(Their barrier alignment: tests/test_protocols.py; on a real broker:
tests/test_union.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from weir import Job, JobDefinitionError
from weir.operators.physical import compile_plan
from weir.operators.plan import RepartitionSource, Union


def union_job() -> Job:
    """Two sources, one behind a rebalance, merged and counted per key."""
    job = Job("u")
    eu = job.source("eu", max_out_of_orderness=1, idle_timeout=2)
    us = job.source("us", max_out_of_orderness=3, idle_timeout=5).rebalance(name="spread")
    (
        eu.union(us, name="both")
        .key_by(lambda r: r["k"], name="by-k")
        .reduce(lambda a, b: b, name="last")
        .sink("out")
    )
    return job


def test_a_union_is_one_node_fed_by_each_of_its_inputs():
    plan = compile_plan(union_job(), "g")
    eu, us, internal = plan.roots
    (union_from_eu,) = eu.children
    (spread,) = us.children
    (union_from_us,) = spread.children
    assert union_from_eu is union_from_us, "compiled once, shared by both inputs"
    assert isinstance(union_from_eu.op, Union)
    assert union_from_eu.op.inputs == ("source-eu", "spread")
    assert [n.op.name for n in plan.nodes()].count("both") == 1, "walked once"
    assert isinstance(internal.op, RepartitionSource)
    assert (internal.op.upstream, internal.op.max_out_of_orderness, internal.op.idle_timeout) == (
        "eu",
        3,
        5,
    ), "the repartition after a union allows the largest disorder and idle timeout"
    assert [s.name for s in plan.stateful] == ["last"]


def test_plan_shows_a_union_once_with_its_inputs():
    text = compile_plan(union_job(), "g").describe()
    assert "both: union of source-eu, spread" in text
    assert "-> both (an input of it; described above)" in text
    assert text.count("sink-out") == 1


def test_union_is_checked_when_defined():
    job = Job("u")
    a, b = job.source("a"), job.source("b")
    with pytest.raises(JobDefinitionError, match="at least one other stream"):
        a.union()
    with pytest.raises(JobDefinitionError, match="'source-b' is given twice"):
        a.union(b, b)
    other = Job("other")
    with pytest.raises(JobDefinitionError, match="belongs to job 'other'"):
        a.union(other.source("c"))


def test_keyed_state_right_after_a_union_needs_a_key_by_fn():
    job = Job("u")
    a, b = job.source("a"), job.source("b")
    a.key_by().union(b.key_by(), name="both").key_by().reduce(lambda x, y: y).sink("out")
    with pytest.raises(JobDefinitionError, match="after both, which merges streams partitioned"):
        compile_plan(job, "g")


def readme_examples() -> list[str]:
    """The Python examples of README.md's "Several inputs" section."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## Several inputs", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("example", readme_examples())
def test_readme_examples_of_several_inputs_compile(example):
    scope: dict = {}
    exec(example, scope)  # the README's own example
    plan = compile_plan(scope["job"], "g")
    assert plan.sink_topics, "the example writes somewhere"
