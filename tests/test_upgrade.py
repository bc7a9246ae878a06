"""Safe upgrades of a job with keyed state (weir/service/upgrade.py).

A new version of a job whose stateful operator is named differently would find no
state under the new name and begin empty; the worker stops instead, naming the old
and the new names, unless started with --allow-state-reset. ``weir plan --check``
shows the difference without starting. The unit tests check the comparison with
plain data; the broker test runs the versions of one job in turn on one group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from rocksdict import Rdict

from tests.kafka_fixture import consume_all, produce_json
from tests.waiting import wait_for
from tests.workers import JOBS, ROOT, WorkerProcess, WorkerThread, job_env
from weir import Job, Tumbling
from weir.operators.physical import compile_plan
from weir.service.config import load_config
from weir.service.exceptions import ConfigError, StateMismatch
from weir.service.restore import RestoreFailed, check_states
from weir.service.state_rename import renamed_state
from weir.service.upgrade import StateDiff, group_changelogs

# -- the comparison, without a broker --------------------------------------------------------


def _counting_job(extra_map: bool = False, name: str | None = None) -> Job:
    job = Job("counting")
    stream = job.source("in").key_by()
    if extra_map:
        stream = stream.filter(bool)
    stream.map(lambda r: r).reduce(lambda a, b: b, name=name).sink("out")
    return job


def test_generated_names_shift_and_are_marked_as_generated():
    v1, v2 = compile_plan(_counting_job(), "g"), compile_plan(_counting_job(True), "g")
    assert [s.name for s in v1.stateful] == ["reduce-4"]
    assert [s.name for s in v2.stateful] == ["reduce-5"], "one operator before it renames it"
    assert v2.stateful[0].op.auto_named
    named = compile_plan(_counting_job(True, name="reduce-4"), "g").stateful[0]
    assert named.name == "reduce-4" and not named.op.auto_named


def test_changelogs_of_a_longer_group_are_not_taken_for_the_groups_own():
    topics = ["a.x.changelog", "a.b.y.changelog", "a.c.z.changelog", "ab.q.changelog", "a.dlq"]
    assert group_changelogs("a", topics, other_groups={"a.b", "ab"}) == {
        "x": "a.x.changelog",
        "c.z": "a.c.z.changelog",
    }
    assert group_changelogs("a.b", topics, other_groups={"a"}) == {"y": "a.b.y.changelog"}


def test_a_renamed_generated_name_is_refused_with_both_names_and_the_fix():
    plan = compile_plan(_counting_job(extra_map=True), "g")
    diff = StateDiff.of(plan, {"reduce-4": "g.reduce-4.changelog"})
    assert not diff.safe
    assert [(old, new.name) for old, new in diff.renames()] == [("reduce-4", "reduce-5")]
    message = diff.refusal()
    assert "\n" not in message
    for part in ("reduce-4 (g.reduce-4.changelog)", "reduce-5 (reduce", "name='reduce-4'",
                 "--allow-state-reset"):  # fmt: skip
        assert part in message, (part, message)
    text = diff.describe()
    assert "left behind  reduce-4: g.reduce-4.changelog" in text
    assert "new          reduce-5 (reduce, generated name): starts empty" in text
    assert "warning: reduce-5 (reduce) keeps keyed state under a generated name" in text


def test_a_generated_name_pairs_only_with_an_operator_of_its_kind():
    job = Job("two")
    keyed = job.source("in").key_by()
    keyed.reduce(lambda a, b: b, name="sum").sink("o1")
    keyed.map(lambda r: r).aggregate(n="count", name="tally").sink("o2")
    diff = StateDiff.of(compile_plan(job, "g"), {"aggregate-9": "g.aggregate-9.changelog"})
    assert [(old, new.name) for old, new in diff.renames()] == [("aggregate-9", "tally")]


def test_the_same_names_are_compatible_and_new_operators_start_empty():
    plan = compile_plan(_counting_job(name="counts"), "g")
    assert StateDiff.of(plan, {"counts": "g.counts.changelog"}).safe
    fresh = StateDiff.of(plan, {})
    assert fresh.safe and [s.name for s in fresh.new] == ["counts"]
    assert "compatible" in fresh.describe()


def test_a_changelog_of_another_kind_of_operator_is_refused_at_restore():
    """Same name, other kind: the names match, the states inside do not."""
    window = Job("w")
    window.source("in").key_by().window(Tumbling(seconds=1)).aggregate(n="count", name="x").sink(
        "out"
    )
    (state,) = compile_plan(window, "g").stateful
    check_states(state, "g.x.changelog", [("x.windows", b"k", b"v")])
    with pytest.raises(RestoreFailed, match=r"g.x.changelog holds state x.acc, which operator"
                       r" 'x' \(window\) does not keep"):  # fmt: skip
        check_states(state, "g.x.changelog", [("x.windows", b"k", b"v"), ("x.acc", b"k", b"v")])


def test_rename_state_maps_the_old_states_to_the_new_operators():
    plan = compile_plan(_counting_job(extra_map=True, name="counts"), "g")
    (counts,) = plan.stateful
    assert renamed_state("reduce-4.acc", "reduce-4", counts) == "counts.acc"
    with pytest.raises(StateMismatch, match=r"holds state 'reduce-4.windows', which operator"):
        renamed_state("reduce-4.windows", "reduce-4", counts)  # it was a window
    existing = {"reduce-4": "g.reduce-4.changelog"}
    diff = StateDiff.of(plan, existing, {"reduce-4": "counts"})
    assert diff.safe and not diff.new and not diff.kept
    assert diff.renamed == {"reduce-4": ("g.reduce-4.changelog", counts)}
    assert StateDiff.of(plan, {"counts": "g.counts.changelog"}, {"reduce-4": "counts"}).safe, (
        "copied earlier: the old changelog is gone, the new one kept"
    )
    for renames, message in (
        ({"reduce-4": "nope"}, "the job has no stateful operator 'nope' .it has: counts."),
        ({"reduce-9": "counts"}, "holds no state 'reduce-9' .state no operator of the job"),
    ):
        with pytest.raises(StateMismatch, match=message):
            StateDiff.of(plan, existing, renames)


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        ({"rename_state": ["a=b", "c = d"]}, {}, {"a": "b", "c": "d"}),
        ({}, {"WEIR_RENAME_STATE": "a=b,window-4=stats"}, {"a": "b", "window-4": "stats"}),
        ({"rename_state": ["x=y"]}, {"WEIR_RENAME_STATE": "a=b"}, {"x": "y"}),
    ],
)
def test_rename_state_from_flags_and_environment(flags, env, expected):
    assert load_config(flags, env).rename_state == expected


def test_rename_state_from_the_config_file(tmp_path):
    table, listed = tmp_path / "table.toml", tmp_path / "list.toml"
    table.write_text('[rename-state]\nwindow-4 = "stats"\n')
    listed.write_text('rename-state = ["window-4=stats"]\nallow-state-reset = true\n')
    assert load_config({"config": str(table)}, {}).rename_state == {"window-4": "stats"}
    config = load_config({"config": str(listed)}, {})
    assert config.rename_state == {"window-4": "stats"} and config.allow_state_reset


@pytest.mark.parametrize("item", ["a", "a=", "a=b c", "a=a"])
def test_a_bad_rename_names_the_flag(item):
    with pytest.raises(ConfigError, match=f"--rename-state {item!r}"):
        load_config({"rename_state": [item]}, {})


@pytest.mark.parametrize("text, expected", [("1", True), ("true", True), ("no", False)])
def test_allow_state_reset_from_the_environment(text, expected):
    assert load_config({}, {"WEIR_ALLOW_STATE_RESET": text}).allow_state_reset is expected


def test_a_bad_allow_state_reset_names_the_variable():
    with pytest.raises(ConfigError, match="WEIR_ALLOW_STATE_RESET='maybe': expected true or false"):
        load_config({}, {"WEIR_ALLOW_STATE_RESET": "maybe"})


# -- versions of one job on one group, on the broker ----------------------------------------


def _weir(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weir.service.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _topics(admin) -> set[str]:
    return set(admin.list_topics(timeout=10).topics)


def test_upgrades_keep_refuse_or_reset_state(kafka_bootstrap, kafka_admin, new_topic, tmp_path):
    src, out = new_topic(partitions=2), new_topic(partitions=2)
    group = f"up-{uuid.uuid4().hex[:8]}"
    job_file = str(JOBS / "upgradable.py")
    base = job_env(in_=src, out=out)
    v2 = {**base, **job_env(extra_map=1)}  # a filter before the count: reduce-4 -> reduce-5
    keys = [f"k{i}" for i in range(5)]
    seen = 0

    def run_version(env: dict[str, str], **config) -> list[dict]:
        """Run the job as ``env`` defines it over one record per key; its outputs."""
        nonlocal seen
        worker = WorkerThread(
            "upgradable.py",
            env,
            group=group,
            bootstrap=kafka_bootstrap,
            checkpoint_interval_ms=200,
            state_dir=str(tmp_path / "state"),
            **config,
        )
        try:
            records = [{"n": seen + i, "k": k} for i, k in enumerate(keys)]
            produce_json(kafka_bootstrap, src, records, key=lambda r: r["k"].encode())
            seen += len(records)
            got = consume_all(kafka_bootstrap, out, expected=seen, timeout=60)
        finally:
            worker.stop()
        assert len(got) == seen
        return [r["value"] for r in got if r["value"]["last"] >= seen - len(keys)]

    # Version 1: the count has a generated name, reduce-4; every key counts to 1, 2.
    run_version(base)
    assert {r["count"] for r in run_version(base)} == {2}
    assert f"{group}.reduce-4.changelog" in _topics(kafka_admin)

    # Version 2 adds an operator before the count: `weir run` refuses, naming both.
    state_dir = str(tmp_path / "state")
    done = _weir("run", job_file, "--bootstrap", kafka_bootstrap, "--group", group,
                 "--state-dir", state_dir, env=v2)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("weir: error: ")]
    assert len(error) == 1, done.stderr
    for part in ("reduce-4", "reduce-5", "name='reduce-4'", "--allow-state-reset"):
        assert part in error[0], (part, error[0])
    assert f"{group}.reduce-5.changelog" not in _topics(kafka_admin), "it created nothing"

    # `weir plan --check` prints the difference without starting, and exits as run did.
    check = ["plan", job_file, "--check", "--bootstrap", kafka_bootstrap, "--group", group]
    done = _weir(*check, env=v2)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"left behind  reduce-4: {group}.reduce-4.changelog" in done.stdout
    assert "new          reduce-5 (reduce, generated name): starts empty" in done.stdout
    assert "likely rename reduce-4 -> reduce-5: name='reduce-4' or --rename-state" in done.stdout

    # The fix the message names: the old name keeps the state (counts go on to 3).
    named = {**v2, **job_env(state_name="reduce-4")}
    done = _weir(*check, env=named)
    assert done.returncode == 0 and "kept         reduce-4 (reduce)" in done.stdout, done.stdout
    assert {r["count"] for r in run_version(named)} == {3}

    # Renamed on purpose with --rename-state: the state is copied to the new name and the
    # old changelog deleted; counts go on to 4. A name the group has no state of is refused.
    renamed = {**v2, **job_env(state_name="counts")}
    done = _weir(*check, "--rename-state", "reduce-9=counts", env=renamed)
    assert done.returncode == 2 and "holds no state 'reduce-9'" in done.stderr, done.stderr
    done = _weir(*check, "--rename-state", "reduce-4=counts", env=renamed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"renamed      reduce-4 -> counts (reduce): {group}.reduce-4.changelog" in done.stdout
    assert {r["count"] for r in run_version(renamed, rename_state={"reduce-4": "counts"})} == {4}
    assert {r["count"] for r in run_version(renamed)} == {5}, "and stays with the new name"
    wait_for(
        lambda: f"{group}.reduce-4.changelog" not in _topics(kafka_admin),
        30,
        "the old changelog deleted",
    )
    local = Rdict.list_cf(str(Path(state_dir, group, "w1")))
    assert "counts.acc" in local and "reduce-4.acc" not in local, "old local state dropped"

    # Renamed with --allow-state-reset: the old state is deleted, the count starts empty,
    # and later starts are not refused.
    reset = {**v2, **job_env(state_name="total")}
    assert _weir(*check, env=reset).returncode == 2
    assert {r["count"] for r in run_version(reset, allow_state_reset=True)} == {1}
    wait_for(
        lambda: f"{group}.counts.changelog" not in _topics(kafka_admin),
        30,
        "the old changelog deleted",
    )
    done = _weir(*check, env=reset)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"kept         total (reduce): {group}.total.changelog" in done.stdout
    assert {r["count"] for r in run_version(reset)} == {2}


def test_workers_started_together_copy_a_renamed_state_once(kafka_bootstrap, new_topic, tmp_path):
    """Three workers of the new version start at once, each with --rename-state: one
    copies (the others are fenced and wait for it), all run, and the counts go on."""
    src, out = new_topic(partitions=2), new_topic(partitions=2)
    group = f"up-{uuid.uuid4().hex[:8]}"
    base = job_env(in_=src, out=out)
    keys = [f"k{i}" for i in range(20)]

    def feed(first: int) -> None:
        records = [{"n": first + i, "k": k} for i, k in enumerate(keys)]
        produce_json(kafka_bootstrap, src, records, key=lambda r: r["k"].encode())

    old = WorkerThread(
        "upgradable.py", base, group=group, bootstrap=kafka_bootstrap,
        checkpoint_interval_ms=200, state_dir=str(tmp_path / "old"),
    )  # fmt: skip
    try:
        feed(0)
        assert len(consume_all(kafka_bootstrap, out, expected=20, timeout=60)) == 20
    finally:
        old.stop()
    env = {**base, **job_env(extra_map=1, state_name="counts")}
    args = ["--rename-state", "reduce-4=counts", "--checkpoint-interval-ms", "200"]
    workers = [
        WorkerProcess(
            "upgradable.py",
            kafka_bootstrap,
            group,
            f"w{i}",
            tmp_path,
            env=env,
            args=[*args, "--state-dir", str(tmp_path / f"w{i}")],
        )
        for i in range(3)
    ]
    try:
        for worker in workers:
            worker.wait_running(90, partitions=False)  # 2 partitions: one worker idles
        feed(20)
        got = consume_all(kafka_bootstrap, out, expected=40, timeout=60)
        logs = [worker.log_tail(400) for worker in workers]
    finally:
        for worker in workers:
            worker.close()
    assert {r["value"]["count"] for r in got if r["value"]["last"] >= 20} == {2}
    assert sum("copied 20 records of state reduce-4 to counts" in log for log in logs) == 1
