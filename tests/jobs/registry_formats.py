"""Test job: readings in a schema-registry format in, the same readings with
``double`` = 2 x value out, in the same format (WEIR_TEST_FORMAT: avro, protobuf,
jsonschema). WEIR_TEST_READER=v2 reads Avro with the evolved reader schema and
writes JSON instead (so a test sees the defaults it filled in)."""

import os

from tests.schemas import AVRO_OUT, AVRO_V2, JSON_SCHEMA, Reading
from weir import Avro, Job, JsonSchema, Protobuf

FORMAT = os.environ["WEIR_TEST_FORMAT"]
if FORMAT == "avro" and os.environ.get("WEIR_TEST_READER") == "v2":
    source_format, sink_format = Avro(AVRO_V2), "json"
elif FORMAT == "avro":
    source_format, sink_format = Avro(), Avro(AVRO_OUT)
elif FORMAT == "protobuf":
    source_format = sink_format = Protobuf(Reading)
else:
    source_format, sink_format = JsonSchema(), JsonSchema(JSON_SCHEMA)

job = Job("registry-formats")
(
    job.source(os.environ["WEIR_TEST_IN"], value=source_format)
    .map(lambda r: {**r, "double": 2 * r["value"]})
    .sink(os.environ["WEIR_TEST_OUT"], value=sink_format)
)
