"""Nexmark q0 on Weir: pass-through (see benchmarks/nexmark/spec.py)."""

import os

from weir import Job

job = Job("nexmark-q0")
job.source(os.environ["NEXMARK_IN"], value="json").sink(os.environ["NEXMARK_OUT"], value="json")
