"""The reference for tests/jobs/broadcast_rules.py: what it must emit for a partition's
log of rules and events, computed in plain Python (no Weir code)."""

from __future__ import annotations


def replay_rules(log: list[tuple]) -> list[dict]:
    """What tests/jobs/broadcast_rules.py emits for one partition's log of
    ``(side, user, value)`` records, in order."""
    rules: dict[str, dict] = {}
    last: dict[str, str] = {}
    out = []
    for side, user, value in log:
        if side == 1:
            if value.get("remove"):
                rules.pop(value["name"], None)
            else:
                rules[value["name"]] = value
            continue
        for name, rule in sorted(rules.items()):
            if last.get(user) == rule["first"] and value["shape"] == rule["second"]:
                out.append({"user": user, "rule": name, "n": value["n"]})
        last[user] = value["shape"]
    return out
