"""The one slot's stateless chain on the fetch thread (`weir.service.inline`), with the
real `Slot` and chain over a fake producer: when it runs there, that order and failures
are kept, and that the watchdog interrupts a hung function (checkpoint timeout, stop)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.fakes import Msg, Slots
from weir import Job
from weir.operators.chain import Barrier
from weir.service.checkpoint import CheckpointTimedOut
from weir.service.exceptions import ShutdownOverran
from weir.service.inline import InlineChain
from weir.service.router import SlotRouter
from weir.service.slots import FETCHER, SOURCES, Inbox


class Coordinator:
    """What the watchdog reads of the checkpoint coordinator: how long the checkpoint
    has been waited for (``age``), against ``timeout_s``."""

    def __init__(self, age: float = 0.0, timeout_s: float = 1.0) -> None:
        self.age, self.timeout_s = age, timeout_s
        self.timed_out_with: list[str] = []

    def waiting(self, now: float) -> tuple[int, float]:
        return 7, self.age

    def timed_out(self, reason: str) -> CheckpointTimedOut:
        self.timed_out_with.append(reason)
        return CheckpointTimedOut(reason)


class Pool:
    def __init__(self, slots: Slots) -> None:
        self.slots = slots.all


def _inline(
    job: Job, coordinator: Coordinator, shutdown_s: float = 30.0, stateful: bool = False
) -> tuple[Slots, InlineChain, threading.Event, list[BaseException]]:
    slots = Slots(job, 1, policy="fail", stateful=stateful)
    failures: list[BaseException] = []
    slots[0].on_fatal = failures.append
    slots[0].inbox = Inbox()
    slots[0].inbox.idle = True  # as when the slot thread waits in `get`
    stopping = threading.Event()
    inline = InlineChain(Pool(slots), stopping, shutdown_s, enabled=True)
    inline.start(coordinator)
    return slots, inline, stopping, failures


def _route(msgs: list[Msg]) -> list:
    router = SlotRouter(1, 128)
    router.reassign([("in", 0)])
    return router.route(msgs)[0]


def test_an_inbox_is_idle_and_empty_only_while_its_thread_waits_on_nothing():
    inbox = Inbox()
    assert not inbox.idle_and_empty(), "the slot thread has not reached get yet"
    taken = []
    thread = threading.Thread(target=lambda: taken.append(inbox.get()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not inbox.idle_and_empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert inbox.idle_and_empty()
    inbox.put(SOURCES, FETCHER, Barrier(1))
    thread.join(5)
    assert taken and not inbox.idle_and_empty(), "it took an item: busy until it waits again"


def test_the_fetch_thread_runs_a_stateless_chain_only_when_the_slot_waits_on_nothing():
    ran_on: list[int] = []

    def double(r: dict) -> dict:
        ran_on.append(threading.get_ident())
        return {"n": r["n"] * 2}

    job = Job("inline")
    job.source("in").map(double).sink("out")
    slots, inline, _, failures = _inline(job, Coordinator())
    try:
        assert inline.run(_route([Msg("in", 0, o, {"n": o}) for o in range(3)]))
        assert [r.record for r in slots.producer.to("out")] == [{"n": 0}, {"n": 2}, {"n": 4}]
        assert set(ran_on) == {threading.get_ident()} and inline.batches == 1
        assert slots[0].stats.records == 3, "counted as the slot's work"
        slots[0].inbox.put(SOURCES, FETCHER, Barrier(1))
        assert not inline.run(_route([Msg("in", 0, 3, {"n": 3})])), "behind the barrier"
        assert len(slots.producer.to("out")) == 3 and not failures
    finally:
        inline.stop()


def test_a_chain_with_state_stays_on_its_slot_thread():
    job = Job("keyed")
    job.source("in").key_by(lambda r: str(r["k"])).reduce(max, name="top").sink("out")
    slots, inline, _, _ = _inline(job, Coordinator(), stateful=True)
    try:
        assert not inline.run(_route([Msg("in", 0, 0, {"k": 1})]))
        assert not slots.producer.records
    finally:
        inline.stop()


def test_a_failing_chain_fails_its_slot_as_on_the_slot_thread():
    def boom(r: dict) -> dict:
        raise ValueError("bad record")

    job = Job("fails")
    job.source("in").map(boom).sink("out")
    _, inline, _, failures = _inline(job, Coordinator())
    try:
        assert inline.run(_route([Msg("in", 0, 0, {"n": 1})]))
        assert len(failures) == 1 and "bad record" in str(failures[0]), failures
    finally:
        inline.stop()


def _hung(release: threading.Event):
    def lookup(r: dict) -> dict:
        release.wait(20)  # bounded: a watchdog that never fires fails the test
        return r

    job = Job("hangs")
    job.source("in").map(lookup, name="slow-lookup").sink("out")
    return job


def test_the_watchdog_interrupts_a_function_past_the_checkpoint_timeout():
    release = threading.Event()
    coordinator = Coordinator(age=5.0, timeout_s=1.0)  # waited past the timeout
    slots, inline, _, failures = _inline(_hung(release), coordinator)
    started = time.monotonic()
    try:
        with pytest.raises(CheckpointTimedOut) as raised:
            inline.run(_route([Msg("in", 0, 41, {"n": 1})]))
        assert time.monotonic() - started < 5, "interrupted within a few watch periods"
        assert "'slow-lookup'" in str(raised.value) and "in[0]@41" in str(raised.value)
        assert coordinator.timed_out_with == [str(raised.value)], "recorded as timed out"
        assert not slots.producer.records and not failures and inline.running is None
    finally:
        release.set()
        inline.stop()


def test_the_watchdog_bounds_a_stop_while_a_function_hangs():
    release = threading.Event()
    _, inline, stopping, _ = _inline(_hung(release), Coordinator(), shutdown_s=0.3)
    stopping.set()
    started = time.monotonic()
    try:
        with pytest.raises(ShutdownOverran, match=r"stopping overran shutdown_timeout_s=0\.3"):
            inline.run(_route([Msg("in", 0, 0, {"n": 1})]))
        assert time.monotonic() - started < 5
    finally:
        release.set()
        inline.stop()
