"""The job API. A job file imports what it needs from here and nothing else::

    from operators import Job

    job = Job("clean-readings")
    job.source("sensors").filter(lambda r: r["value"] >= 0).sink("clean")

The operator implementations that run inside slots live in `operators.chain`;
they are the runtime's business, not the job author's.
"""

from operators.aggregates import AggregateFunction
from operators.api import Job, KeyedStream, Stream, WindowedStream
from operators.exceptions import JobDefinitionError
from operators.formats import Serde, SerdeContext
from operators.meta import RecordMeta
from operators.process import KeyedProcessFunction
from operators.schemas import Avro, JsonSchema, Protobuf
from operators.windows import Session, Sliding, Tumbling

__all__ = [
    "AggregateFunction",
    "Avro",
    "Job",
    "JobDefinitionError",
    "JsonSchema",
    "KeyedProcessFunction",
    "KeyedStream",
    "Protobuf",
    "RecordMeta",
    "Serde",
    "SerdeContext",
    "Session",
    "Sliding",
    "Stream",
    "Tumbling",
    "WindowedStream",
]
