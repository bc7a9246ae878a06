"""Safe upgrades of a job with keyed state: the job's stateful operators against the
state its group already holds.

Keyed state is found by operator name: operator ``name`` keeps its state in the
changelog ``<group>.<name>.changelog`` (and in local column families named after
it). A new version of a job in which a stateful operator's name changed — renamed,
or an unnamed one whose generated ``<kind>-<n>`` name shifted because an operator
was added before it — would find no changelog under the new name and start empty,
while the old state stayed behind, unused. Flink refuses to start from a savepoint
holding state no operator claims unless told ``--allowNonRestoredState``; a worker
does the same, with the group's changelog topics as the record of what state
exists. Stable names are the remedy: ``name=`` on every stateful operator (Flink's
``uid()``).

Before a worker creates its changelogs (`check_state`):

1. Read the group's changelog topics: every ``<group>.<name>.changelog``, except
   those another group owns (``<group>.<x>`` is a consumer group, or has a
   dead-letter topic, and the name begins with ``<x>.``) and the job's own topics.
2. Compare (`StateDiff`): *kept* (an operator of the job with its changelog), *new*
   (an operator without one: it starts empty), *left behind* (a changelog no
   operator of the job claims), and likely renames among them.
   ``--rename-state OLD=NEW`` turns a left-behind ``OLD`` into a rename.
3. State left behind: stop with `StateMismatch` (exit 2) naming the old and the new
   names and how to keep the state — unless the worker was started with
   ``--allow-state-reset``.
4. Copy each renamed state to its new name (`weir.service.state_rename`).
5. With ``--allow-state-reset``, delete the left-behind changelogs: their state is
   dropped, as asked, so later starts do not stop again; the new operators start
   empty.

``weir plan JOB.py --check`` runs steps 1-2 and prints the difference.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from weir.operators.physical import KeyedState, PhysicalPlan
from weir.service.exceptions import StateMismatch
from weir.service.topics import delete_topics

log = logging.getLogger(__name__)

CHANGELOG_SUFFIX = ".changelog"
_GENERATED = re.compile(r"^(?P<kind>[a-z_]+)-(?P<n>\d+)$")  # `Job._add`'s default names


def group_changelogs(
    group: str, topics: Collection[str], other_groups: Collection[str]
) -> dict[str, str]:
    """Step 1: operator name -> changelog topic, for the changelogs among ``topics``
    that belong to ``group``. Names may contain dots, so ``a.b.x.changelog`` is group
    ``a``'s operator ``b.x`` or group ``a.b``'s operator ``x``: when ``a.b`` is in
    ``other_groups`` it is taken for the latter."""
    prefix = f"{group}."
    found = {}
    for topic in topics:
        if not (topic.startswith(prefix) and topic.endswith(CHANGELOG_SUFFIX)):
            continue
        name = topic[len(prefix) : -len(CHANGELOG_SUFFIX)]
        parts = name.split(".")
        longer = (prefix + ".".join(parts[:i]) for i in range(1, len(parts)))
        if name and not any(g in other_groups for g in longer):
            found[name] = topic
    return found


@dataclass(frozen=True)
class StateDiff:
    """Step 2: the job's stateful operators against the group's changelogs."""

    group: str
    kept: tuple[KeyedState, ...]
    new: tuple[KeyedState, ...]
    left: dict[str, str] = field(default_factory=dict)  # old name -> its changelog
    # old name -> (its changelog, the operator its state is to be copied to)
    renamed: dict[str, tuple[str, KeyedState]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, plan: PhysicalPlan, existing: dict[str, str], renames: Mapping[str, str] | None = None
    ) -> StateDiff:
        """Compare; ``renames`` (old -> new name) must name a new operator of the job and
        state the group holds, or state already copied to the new name."""
        ops = {state.name: state for state in plan.stateful}
        renamed = {}
        for old, new in (renames or {}).items():
            flag = f"--rename-state {old}={new}"
            if new not in ops:
                raise StateMismatch(
                    f"{flag}: the job has no stateful operator {new!r} (it has:"
                    f" {', '.join(ops) or 'none'})"
                )
            if old in ops:
                raise StateMismatch(f"{flag}: the job still has an operator named {old!r}")
            if old in existing:
                renamed[old] = (existing[old], ops[new])
            elif new not in existing:
                held = ", ".join(n for n in existing if n not in ops) or "none"
                raise StateMismatch(
                    f"{flag}: group {plan.group!r} holds no state {old!r} (state no operator"
                    f" of the job has: {held})"
                )
        targets = {state.name for _, state in renamed.values()}
        return cls(
            plan.group,
            kept=tuple(s for s in plan.stateful if s.name in existing and s.name not in targets),
            new=tuple(s for s in plan.stateful if s.name not in existing.keys() | targets),
            left={n: t for n, t in sorted(existing.items()) if n not in ops and n not in renamed},
            renamed=renamed,
        )

    @property
    def safe(self) -> bool:
        """No state would be left behind."""
        return not self.left

    def renames(self) -> list[tuple[str, KeyedState]]:
        """Likely renames (old name, new operator): a left-behind generated name pairs
        with the first new operator of its kind, any other name with the first new one."""
        free = list(self.new)
        pairs = []
        for old in sorted(self.left, key=_generated_order):
            m = _GENERATED.match(old)
            match = next((s for s in free if m is None or s.op.kind == m["kind"]), None)
            if match is not None:
                pairs.append((old, match))
                free.remove(match)
        return pairs

    def refusal(self) -> str:
        """Why a worker does not start, and the ways on, in one line."""
        left = ", ".join(f"{n} ({t})" for n, t in self.left.items())
        new = ", ".join(_named(s) for s in self.new) or "none"
        hints = "; ".join(f"{s.name}: name={old!r}" for old, s in self.renames())
        flags = " ".join(f"--rename-state {old}={s.name}" for old, s in self.renames())
        keep = (
            f"To keep it, give the operators their old names ({hints}) or start with {flags}"
            if hints
            else "To keep it, give an operator of the job its old name (name=...) or start"
            " with --rename-state OLD=NEW"
        )
        drop = ", ".join(self.left.values())
        return (
            f"group {self.group!r} holds keyed state that no stateful operator of this job"
            f" has: {left}; the job's stateful operators without state: {new}. Started"
            " like this, they would begin empty and that state would be left behind. "
            f"{keep}; to drop it, start with --allow-state-reset (deletes {drop})."
            " `weir plan JOB.py --check` shows the difference"
        )

    def describe(self) -> str:
        """The difference, for ``weir plan --check``."""
        lines = [f"state of group {self.group!r}:"]
        for s in self.kept:
            lines.append(f"  kept         {_named(s)}: {s.changelog}")
        for s in self.new:
            lines.append(f"  new          {_named(s)}: starts empty")
        for old, (topic, s) in self.renamed.items():
            lines.append(
                f"  renamed      {old} -> {_named(s)}: {topic} is copied to {s.changelog},"
                " then deleted"
            )
        for name, topic in self.left.items():
            lines.append(f"  left behind  {name}: {topic} (no operator of the job has this name)")
        for old, s in self.renames():
            lines.append(
                f"  likely rename {old} -> {s.name}: name={old!r} or --rename-state"
                f" {old}={s.name} keeps its state"
            )
        if self.safe:
            lines.append(
                "compatible: `weir run` keeps the state of every kept and renamed operator"
            )
        else:
            drop = ", ".join(self.left.values())
            lines.append(
                "not compatible: `weir run` stops (exit 2) unless started with"
                f" --allow-state-reset, which deletes {drop}"
            )
        lines.extend(f"warning: {w}" for w in self.warnings())
        return "\n".join(lines)

    def warnings(self) -> list[str]:
        """One per stateful operator named ``<kind>-<n>`` by `Job`, not by the author."""
        ops = (*self.kept, *self.new, *(s for _, s in self.renamed.values()))
        return [generated_name_warning(s) for s in ops if s.op.auto_named]


def generated_name_warning(state: KeyedState) -> str:
    """Why a generated name is fragile, and the ``name=`` that fixes it."""
    return (
        f"{state.name} ({state.op.kind}) keeps keyed state under a generated name, which"
        " changes when an operator is added or removed before it: give it a stable name"
        f" (name={state.name!r} keeps the state it has now)"
    )


def read_state(
    admin: AdminClient, plan: PhysicalPlan, renames: Mapping[str, str], timeout_s: float
) -> StateDiff:
    """Steps 1-2, from the cluster's topics and consumer groups."""
    topics = set(admin.list_topics(timeout=timeout_s).topics)
    others = {t[: -len(".dlq")] for t in topics if t.endswith(".dlq")}
    try:
        listing = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout_s)
        others |= {g.group_id for g in listing.valid}
    except (KafkaException, TimeoutError) as exc:  # not authorized, say: topics must do
        log.info("cannot list consumer groups (%s); telling groups apart by topics", exc)
    own = {*plan.user_source_topics, *plan.sink_topics}
    existing = group_changelogs(plan.group, topics - own, others)
    for state in plan.stateful:  # the job's own changelogs are its, whatever the groups
        if state.changelog in topics:
            existing[state.name] = state.changelog
    return StateDiff.of(plan, existing, renames)


def check_state(
    admin: AdminClient,
    plan: PhysicalPlan,
    allow_reset: bool,
    renames: Mapping[str, str],
    copy: Callable[[str, str, KeyedState], None],
    timeout_s: float,
) -> StateDiff:
    """Steps 1-5: return the difference, or raise `StateMismatch`. ``copy(old, its
    changelog, new operator)`` carries a renamed state over (step 4)."""
    diff = read_state(admin, plan, renames, timeout_s)
    if not diff.safe and not allow_reset:  # Step 3
        raise StateMismatch(diff.refusal())
    for warning in diff.warnings():
        log.warning("%s", warning)
    for old, (topic, new) in diff.renamed.items():  # Step 4
        copy(old, topic, new)
    for name, topic in diff.left.items():  # Step 5
        log.warning(
            "--allow-state-reset: dropping the state of %s (no operator of the job has"
            " this name): deleting its changelog %s",
            name,
            topic,
        )
    delete_topics(admin, list(diff.left.values()), timeout_s)
    return diff


def _named(state: KeyedState) -> str:
    generated = ", generated name" if state.op.auto_named else ""
    return f"{state.name} ({state.op.kind}{generated})"


def _generated_order(name: str) -> tuple[float, str]:
    m = _GENERATED.match(name)
    return (int(m["n"]) if m else math.inf, name)
