"""Where a Weir worker spends its time on a Nexmark query: py-spy over a busy run.

Pre-fills ``--events`` Nexmark events, starts a Weir worker on the query (same
settings as run.py), attaches ``py-spy record`` (from benchmarks/.peers/tools)
while the worker is draining the backlog, and prints the hottest functions
by self time and by inclusive time, as shares of the samples (all threads;
idle waits excluded, so the shares are of the time Python code was running).
Also keeps the raw collapsed stacks (flamegraph.pl or speedscope render them).

    .venv/bin/python -m benchmarks.nexmark.profile --query q0
    .venv/bin/python -m benchmarks.nexmark.profile --query q5 --guarantee exactly-once

Results: ``benchmarks/results/nexmark-profile-<query>.txt`` (the collapsed stacks
go to benchmarks/results/tmp/; ``--gil`` samples only threads holding the GIL;
``--native`` adds the C frames, to ``nexmark-profile-<query>-native.txt``).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    TMP,
    Child,
    OffsetProbe,
    admin_client,
    create_topics,
    prefill,
    start_broker,
    unique,
)
from benchmarks.nexmark.generator import ORDERED, GeneratorConfig, generate
from benchmarks.nexmark.run import NTMP, group_assigned
from benchmarks.nexmark.systems import BY_NAME, PEERS
from tests.ports import free_port

PY_SPY = PEERS / "tools" / "bin" / "py-spy"


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        threads[frames[0]] += count
        funcs = frames[1:] or frames
        self_t[_short(funcs[-1])] += count
        for f in {_short(f) for f in funcs}:
            incl[f] += count
    out = [f"samples: {total}", "", "threads:"]
    out += [f"  {c / total:6.1%}  {t}" for t, c in threads.most_common()]
    out += ["", f"top {top} by self time (file:function):"]
    out += [f"  {c / total:6.1%}  {f}" for f, c in self_t.most_common(top)]
    out += ["", f"top {top} by inclusive time:"]
    out += [f"  {c / total:6.1%}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out) + "\n"


def _short(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'file.py:func' with the package directory kept."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part in ("weir", "site-packages", "benchmarks"):
            path = "/".join(parts[i + 1 :] if part == "site-packages" else parts[i:])
            break
    else:
        path = Path(path).name
    return f"{path}:{name}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--query", default="q0")
    p.add_argument("--events", type=int, default=400_000)
    p.add_argument("--guarantee", default="exactly-once")
    p.add_argument("--seconds", type=float, default=8.0, help="how long py-spy samples")
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    p.add_argument(
        "--native",
        action="store_true",
        help="include C frames (orjson, librdkafka); py-spy then pauses the worker per sample",
    )
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--partitions", type=int, default=4)
    args = p.parse_args(argv)
    if not PY_SPY.exists():
        print(f"{PY_SPY} missing: run benchmarks/nexmark/setup_peers.sh", file=sys.stderr)
        return 2
    broker = start_broker()
    admin = admin_client(broker.bootstrap)
    source, output, group = unique("nxp-in"), unique("nxp-out"), unique("nxp")
    create_topics(admin, [source], args.partitions, {"retention.ms": "-1"})
    create_topics(admin, [output], args.partitions)
    base = (int(time.time() * 1000) - args.events - 3_600_000) // 60_000 * 60_000
    print(f"pre-filling {args.events:,} events…", flush=True)
    events = generate(args.events, GeneratorConfig(base_time_ms=base))
    prefill(broker.bootstrap, source, events, config=ORDERED)
    system = BY_NAME["weir" if args.guarantee == "exactly-once" else "weir-alo"]
    port = free_port()
    state = NTMP / group
    state.mkdir(parents=True, exist_ok=True)
    launch = system.launch(
        args.query, bootstrap=broker.bootstrap, source=source, output=output, group=group,
        state_dir=state, partitions=args.partitions, http_port=port, tail=False,
    )  # fmt: skip
    child = Child(f"nexmark-profile-{args.query}", launch.cmd, env=launch.env, http_port=port)
    probe = OffsetProbe(broker.bootstrap)
    while not group_assigned(admin, group) and child.alive():
        time.sleep(0.05)
    time.sleep(1.0)  # past start-up: consuming the backlog
    stem = RESULTS / f"nexmark-profile-{args.query}{'-native' if args.native else ''}"
    TMP.mkdir(parents=True, exist_ok=True)
    raw = TMP / f"{stem.name}.collapsed"
    cmd = [
        str(PY_SPY), "record", "--pid", str(child.pid), "--duration", str(int(args.seconds)),
        "--rate", str(args.rate), "--threads", "--format", "raw", "--output", str(raw),
    ]  # fmt: skip
    cmd += (["--gil"] if args.gil else []) + (["--native"] if args.native else ["--nonblocking"])
    started = time.monotonic()
    cpu0 = child.cpu_seconds()
    subprocess.run(cmd, check=True, capture_output=True, timeout=args.seconds + 60)
    wall = time.monotonic() - started
    cpu = child.cpu_seconds() - cpu0
    committed = probe.committed(group, source, args.partitions)
    child.stop()
    text = (
        f"Weir {args.guarantee}, query {args.query}: py-spy {args.rate} Hz for {wall:.1f} s while"
        f" draining a {args.events:,}-event backlog; worker CPU {cpu:.1f} s"
        f" ({cpu / wall:.2f} cores); {committed:,} input events committed by the end.\n"
        + ("(GIL-holding samples only)\n" if args.gil else "")
        + ("(C frames included)\n" if args.native else "")
        + "\n"
        + summarize(raw, args.top)
    )
    stem.with_suffix(".txt").write_text(text)
    print(text)
    print(f"wrote {stem}.txt and {raw.name} (flamegraph.pl / speedscope can render it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
