"""The Python limit: a hand-written confluent-kafka consume → transform → produce loop.

Stateless queries only (q0, q1, q2 of `benchmarks/nexmark/spec.py`): the loop of
`benchmarks/raw_loop.py` (batch consume, ``orjson`` decode, the query's function,
encode, produce, and about once a second flush the producer and commit the
consumer's positions: at-least-once), with the query's function as its transform.
No framework, no threads, no per-record error handling on the fast path.

Usage: python raw.py --query q1 --bootstrap B --input IN --output OUT --group G
Runs until SIGTERM/SIGINT, then flushes, commits and exits 0.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

from benchmarks.nexmark.spec import is_bid, q1_map, q2_filter, q2_project
from benchmarks.raw_loop import arguments, run


def _identity(r: Any) -> Any:
    return r


def _q1(r: Any) -> Any:
    return q1_map(r) if is_bid(r) else None


def _q2(r: Any) -> Any:
    return q2_project(r) if q2_filter(r) else None


QUERIES = {"q0": _identity, "q1": _q1, "q2": _q2}  # query -> transform (None: dropped)


def main() -> int:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--query", required=True, choices=sorted(QUERIES))
    args = p.parse_args()
    return run(args, QUERIES[args.query])


if __name__ == "__main__":
    sys.exit(main())
