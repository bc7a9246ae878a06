"""The job API, which `weir` re-exports: a job file imports it from there::

    from weir import Job

    job = Job("clean-readings")
    job.source("sensors").filter(lambda r: r["value"] >= 0).sink("clean")

The operator implementations that run inside slots live in `weir.operators.chain`;
they are the runtime's business, not the job author's.
"""

from weir.operators.aggregates import AggregateFunction
from weir.operators.api import (
    BroadcastStream,
    ConnectedStreams,
    Job,
    JoinedStreams,
    KeyedStream,
    Stream,
    Table,
    WindowedJoin,
    WindowedStream,
)
from weir.operators.broadcast import KeyedBroadcastProcessFunction
from weir.operators.exceptions import JobDefinitionError
from weir.operators.formats import Serde, SerdeContext
from weir.operators.meta import RecordMeta
from weir.operators.process import KeyedProcessFunction
from weir.operators.schemas import Avro, JsonSchema, Protobuf
from weir.operators.windows import Session, Sliding, Tumbling

__all__ = [
    "AggregateFunction",
    "Avro",
    "BroadcastStream",
    "ConnectedStreams",
    "Job",
    "JobDefinitionError",
    "JoinedStreams",
    "JsonSchema",
    "KeyedBroadcastProcessFunction",
    "KeyedProcessFunction",
    "KeyedStream",
    "Protobuf",
    "RecordMeta",
    "Serde",
    "SerdeContext",
    "Session",
    "Sliding",
    "Stream",
    "Table",
    "Tumbling",
    "WindowedJoin",
    "WindowedStream",
]
