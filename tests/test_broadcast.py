"""Broadcast state on a real broker: rules added and removed while events flow, two
workers with two slots each, one killed (-9) and restarted mid-run with three slots, then a
third worker joining.

The job (tests/jobs/broadcast_rules.py) matches each user's consecutive event shapes
against the current rules. Every rule reaches every partition of the operator's
topic, in one order with that partition's events, fixed once committed (README:
"Broadcast state"). So the test reads that topic (read_committed) and checks that it
holds every event once and every rule once per partition in input order, and that
the job's matches are exactly what a plain-Python replay of each partition's log
(tests/rules_reference.py) gives — each once, whatever the kill changed in timing.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict

from tests.feeding import Feeder
from tests.kafka_fixture import committed_reached, consume_all
from tests.rules_reference import replay_rules
from tests.waiting import wait_for
from tests.workers import Workers, job_env

SESSION = [
    "--kafka", "consumer.session.timeout.ms=6000",
    "--kafka", "consumer.heartbeat.interval.ms=1000",
]  # fmt: skip
SHAPES = ("circle", "square", "star")


def rule_changes(rng: random.Random, count: int) -> list[dict]:
    out = []
    for i in range(count):
        name = f"r{rng.randrange(4)}"
        if i > 3 and rng.random() < 0.3:
            out.append({"name": name, "remove": True})
        else:
            out.append({"name": name, "first": rng.choice(SHAPES), "second": rng.choice(SHAPES)})
    return out


def operator_logs(bootstrap: str, topic: str) -> dict[int, list[tuple]]:
    """Per partition of the operator's topic, its committed ``(side, key, value)``s."""
    logs: dict[int, list[tuple]] = defaultdict(list)
    for r in sorted(consume_all(bootstrap, topic, None, 60),
                    key=lambda r: (r["partition"], r["offset"])):  # fmt: skip
        side, user, value, *_ = r["value"]  # then where the side read it
        logs[r["partition"]].append((side, user, value))
    return logs


def matches(bootstrap: str, topic: str) -> Counter:
    return Counter(
        (r["value"]["user"], r["value"]["rule"], r["value"]["n"])
        for r in consume_all(bootstrap, topic, None, 60)
    )


def test_broadcast_rules_match_the_replay_of_each_partitions_log_through_a_kill(
    kafka_bootstrap, new_topic, tmp_path
):
    rng = random.Random(5)
    events_topic, rules_topic, out = new_topic(partitions=4), new_topic(), new_topic(partitions=2)
    events = [
        {"n": n, "user": f"u{rng.randrange(40)}", "shape": rng.choice(SHAPES)} for n in range(9_000)
    ]
    rules = rule_changes(rng, 16)
    feed_events = Feeder(kafka_bootstrap, events_topic, events, 750, key=lambda e: e["user"])
    feed_rules = Feeder(kafka_bootstrap, rules_topic, rules, 1.4)
    group = f"bc-{uuid.uuid4().hex[:10]}"
    env = job_env(rules=rules_topic, in_=events_topic, out=out, partitions=2)
    args = ["--state-dir", str(tmp_path / "state"), "--checkpoint-interval-ms", "200",
            "--slots", "2", *SESSION]  # fmt: skip
    workers = Workers("broadcast_rules.py", kafka_bootstrap, group, env, args, tmp_path / "logs")
    merged = f"{group}.match.repartition"
    try:
        for worker_id in ("w1", "w2"):
            workers.start(worker_id)
        for worker in workers.live.values():
            worker.wait_running(60, partitions=False)
        feed_events.start()
        feed_rules.start()
        wait_for(lambda: feed_events.sent > len(events) * 0.4, 60, "40% of the events fed")
        workers.kill("w2")
        # back with another slot count; later a third worker joins (a rescale)
        workers.start("w2", ["--slots", "3"]).wait_running(60, partitions=False)
        wait_for(lambda: feed_events.sent > len(events) * 0.7, 60, "70% of the events fed")
        workers.start("w3").wait_running(60, partitions=False)
        feed_events.finish()
        feed_rules.finish()
        wait_for(
            lambda: all(committed_reached(kafka_bootstrap, group, t)
                        for t in (events_topic, rules_topic)),
            120, "the inputs processed", every=1, check=workers.check_alive,
            detail=workers.logs_tail,
        )  # fmt: skip
        logs = operator_logs(kafka_bootstrap, merged)
        want = Counter(
            (m["user"], m["rule"], m["n"]) for log in logs.values() for m in replay_rules(log)
        )
        wait_for(lambda: matches(kafka_bootstrap, out).total() >= want.total(), 120,
                 "as many matches as the replay", every=1, check=workers.check_alive,
                 detail=workers.logs_tail)  # fmt: skip
        workers.stop_all()
    finally:
        feed_events.halt()
        feed_rules.halt()
        workers.close()

    seen = Counter(v["n"] for log in logs.values() for side, _, v in log if side == 0)
    assert seen == Counter(range(len(events))), "every event once in the operator's topic"
    for p in range(2):
        assert [v for side, _, v in logs[p] if side == 1] == rules, f"partition {p}: every rule"
    got = matches(kafka_bootstrap, out)
    assert sum(want.values()) > 100, "the rules matched something"
    missing, extra = want - got, got - want
    assert not missing and not extra, (
        f"{sum(got.values())} matches, {sum(missing.values())} missing (e.g. {list(missing)[:3]}),"
        f" {sum(extra.values())} unexpected (e.g. {list(extra)[:3]})"
    )
