"""Schemas the serde tests and their jobs share: a sensor reading in Avro (two
versions: v2 adds ``unit`` with a default), JSON Schema and Protobuf.

The Protobuf message class is built from a descriptor here, so the tests need
no ``protoc``; a generated ``reading_pb2.Reading`` behaves the same.
"""

from __future__ import annotations

import json

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

AVRO_V1 = json.dumps(
    {
        "type": "record",
        "name": "Reading",
        "namespace": "weir.test",
        "fields": [
            {"name": "tag", "type": "string"},
            {"name": "n", "type": "long"},
            {"name": "value", "type": "double"},
        ],
    }
)
AVRO_V2 = json.dumps(
    {
        **json.loads(AVRO_V1),
        "fields": [
            *json.loads(AVRO_V1)["fields"],
            {"name": "unit", "type": "string", "default": "C"},
        ],
    }
)
# What the jobs write: the reading and the job's mark.
AVRO_OUT = json.dumps(
    {
        **json.loads(AVRO_V1),
        "name": "Marked",
        "fields": [*json.loads(AVRO_V1)["fields"], {"name": "double", "type": "double"}],
    }
)

JSON_SCHEMA = json.dumps(
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Reading",
        "type": "object",
        "properties": {
            "tag": {"type": "string"},
            "n": {"type": "integer"},
            "value": {"type": "number"},
            "double": {"type": "number"},
        },
        "required": ["tag", "n", "value"],
    }
)


def _reading_class() -> type:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="weir_test/reading.proto", package="weirtest", syntax="proto3"
    )
    message = proto.message_type.add(name="Reading")
    for number, (name, kind) in enumerate(
        [
            ("tag", field.TYPE_STRING),
            ("n", field.TYPE_INT32),
            ("value", field.TYPE_DOUBLE),
            ("double", field.TYPE_DOUBLE),
        ],
        start=1,
    ):
        message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("weirtest.Reading"))


Reading = _reading_class()
