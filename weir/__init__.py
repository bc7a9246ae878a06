"""Weir's public API: everything a job file needs, from one import::

    from weir import Job, Tumbling

    job = Job("clean-readings")
    job.source("sensors").filter(lambda r: r["value"] >= 0).sink("clean")

`weir.service`, `weir.operators` and `weir.state` are the implementation (the
worker, the operators that run in slots, keyed state); a job imports from `weir`
only, so their internals can change without breaking jobs. `weir.testing` runs a
job in a test, without Kafka. Everything lives under the one name ``weir``, so a
job folder may have modules of its own called ``service``, ``operators`` or
``state``, and an installed Weir takes no other top-level name.
"""

from importlib.metadata import PackageNotFoundError, version

from weir.operators import (
    AggregateFunction,
    Avro,
    BroadcastStream,
    ConnectedStreams,
    Job,
    JobDefinitionError,
    JoinedStreams,
    JsonSchema,
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    KeyedStream,
    Protobuf,
    RecordMeta,
    Serde,
    SerdeContext,
    Session,
    Sliding,
    Stream,
    Table,
    Tumbling,
    WindowedJoin,
    WindowedStream,
)

try:
    __version__ = version("weir")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

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
    "__version__",
]
