"""Record formats and record metadata.

Unit tests check the definitions and the pieces without a broker; the rest run
jobs on the shared broker — the schema-registry formats against a real registry
(Apicurio, tests/schema_registry.py): Avro, Protobuf and JSON Schema round trips,
an evolved Avro schema read by the job, and records that fail to decode going to
the dead-letter topic with the reason.
"""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.kafka_fixture import consume_all
from tests.schemas import AVRO_OUT, AVRO_V1, AVRO_V2, JSON_SCHEMA, Reading
from tests.workers import WorkerThread, job_env
from weir import Avro, Job, JobDefinitionError
from weir.operators.formats import SerdeContext, SerdeUnavailable, check_format, decoder, encoder
from weir.operators.meta import RecordMeta, normalize_headers
from weir.operators.physical import compile_plan
from weir.operators.schemas import unavailable
from weir.service.config import WorkerConfig, check_formats, load_config
from weir.service.exceptions import ConfigError

# -- definitions and pieces (no broker) ------------------------------------------------


class Upper:
    """A user's serde: upper-cased text."""

    def serialize(self, value, ctx):
        return value.upper().encode()

    def deserialize(self, data, ctx):
        return data.decode().upper()


def test_formats_are_names_or_serdes_checked_at_definition():
    job = Job("formats")
    with pytest.raises(JobDefinitionError, match="value='xml' is not a format"):
        job.source("in", value="xml")
    with pytest.raises(JobDefinitionError, match="key_format=42 is not a format"):
        job.source("in", key_format=42)
    stream = job.source("in", value=Upper(), key_format="str")
    with pytest.raises(JobDefinitionError, match="needs a schema to write"):
        stream.sink("out", value=Avro())
    with pytest.raises(JobDefinitionError, match="with_meta='yes'"):
        stream.map(str, with_meta="yes")
    with pytest.raises(JobDefinitionError, match="key_by\\(with_meta=True\\) needs a function"):
        stream.key_by(with_meta=True)
    stream.sink("out", value="str", key_format=Upper())
    plan = compile_plan(job, "g")
    assert "value=str key=" in plan.describe()


def test_built_in_and_user_formats_encode_and_decode():
    ctx = SerdeContext("t")
    assert decoder(check_format("str", "x"), ctx)(b"h\xc3\xa9") == "hé"
    assert encoder(Upper(), ctx)("abc") == b"ABC"
    assert decoder(Upper(), ctx)(b"abc") == "ABC"
    with pytest.raises(TypeError, match="str format needs str"):
        encoder(check_format("str", "x"), ctx)(1)


def test_a_registry_format_without_a_registry_stops_the_worker_at_start():
    job = Job("needs-registry")
    job.source("in", value=Avro()).sink("out")
    plan = compile_plan(job, "g")
    with pytest.raises(ConfigError, match=r"source\('in'\) value=Avro\(\) needs a schema registry"):
        check_formats(plan, None)
    check_formats(plan, {"url": "http://127.0.0.1:1"})


def test_registry_settings_from_flags_env_and_file(tmp_path):
    config = load_config(
        {"schema_registry_url": "http://r:8081", "schema_registry": ["basic.auth.user.info=u:p"]},
        environ={"WEIR_SCHEMA_REGISTRY_SSL_CA_LOCATION": "/ca.pem"},
    )
    assert config.registry == {
        "url": "http://r:8081",
        "basic.auth.user.info": "u:p",
        "ssl.ca.location": "/ca.pem",
    }
    assert config.redacted()["schema_registry"]["basic.auth.user.info"] == "***"
    toml = tmp_path / "w.toml"
    toml.write_text('schema_registry_url = "https://r"\n[schema_registry]\n"max.retries" = 1\n')
    assert load_config({"config": str(toml)}, environ={}).registry == {
        "url": "https://r",
        "max.retries": "1",
    }
    assert WorkerConfig().registry is None
    with pytest.raises(ConfigError, match="expected an http:// or https:// URL"):
        load_config({"schema_registry_url": "r:8081"}, environ={})
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config({"schema_registry": ["nokey"]}, environ={})


def test_record_meta_and_sink_headers():
    meta = RecordMeta("k", 5, "t", 1, 7, [("a", b"1"), ("a", b"2"), ("b", None)])
    assert meta.header("a") == b"2" and meta.header("b") is None and meta.header("c") is None
    assert RecordMeta(None, 0, "t", 0, None, None).headers == []
    assert normalize_headers({"x": "é", "y": None}) == [("x", "é".encode()), ("y", None)]
    assert normalize_headers([("z", b"1")]) == [("z", b"1")]
    with pytest.raises(TypeError, match="header 'x' has a int value"):
        normalize_headers({"x": 1})


def test_an_unreachable_registry_is_not_the_records_fault():
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    assert unavailable(SchemaRegistryError(503, 50301, "down"))
    assert not unavailable(SchemaRegistryError(404, 40403, "schema not found"))
    decode = decoder(Avro(), SerdeContext("t", registry={"url": "http://127.0.0.1:9"}))
    with pytest.raises(SerdeUnavailable):
        decode(b"\x00\x00\x00\x00\x07\x02")


# -- record metadata through a job (shared broker) -------------------------------------


def test_functions_see_record_metadata_and_sinks_set_keys_and_headers(kafka_bootstrap, new_topic):
    src, out = new_topic(partitions=2), new_topic()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = {}
    for n in range(40):
        headers = [("source", f"s{n}".encode())] + ([("drop", b"1")] if n % 10 == 9 else [])

        def remember(err, msg, n=n):
            assert err is None
            sent[n] = (msg.partition(), msg.offset(), msg.timestamp()[1])

        producer.produce(
            src, f"t{n % 3};{n}".encode(), f"key-{n}", headers=headers, on_delivery=remember
        )
    assert producer.flush(30) == 0
    worker = WorkerThread("with_meta.py", job_env(in_=src, out=out), bootstrap=kafka_bootstrap)
    try:
        got = consume_all(kafka_bootstrap, out, expected=36, timeout=90)
    finally:
        worker.stop()
    assert sorted(r["value"]["n"] for r in got) == [n for n in range(40) if n % 10 != 9]
    for r in got:
        value, n = r["value"], r["value"]["n"]
        partition, offset, timestamp = sent[n]
        assert value["topic"] == src, "the user's serde saw its context"
        assert value["meta"] == {
            "key": f"key-{n}",  # decoded by key_format="str"
            "timestamp": timestamp,
            "topic": src,
            "partition": partition,
            "offset": offset,
            "source": f"s{n}",
        }
        assert r["key"] == value["tag"], "the sink's key function and key format"
        assert r["headers"] == [("source", f"s{n}".encode()), ("seen-offset", str(offset).encode())]


# -- schema-registry formats (real registry) -------------------------------------------


def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, payload in enumerate(payloads):
        producer.produce(topic, payload, str(i))
    assert producer.flush(30) == 0


def _run(bootstrap, registry, src, out, fmt, expected, reader=None, timeout=120.0):
    """Run registry_formats.py until ``expected`` records are out; returns them (raw) and
    the dead letters of its group (JSON-decoded headers)."""
    group = f"g-{uuid.uuid4().hex}"
    env = job_env(in_=src, out=out, format=fmt, **({"reader": reader} if reader else {}))
    worker = WorkerThread(
        "registry_formats.py",
        env,
        bootstrap=bootstrap,
        group=group,
        schema_registry_url=registry,
        checkpoint_interval_ms=300,
    )
    try:
        got = consume_all(bootstrap, out, expected=expected, timeout=timeout, decode_json=False)
    finally:
        worker.stop()
    dead = consume_all(bootstrap, f"{group}.dlq", expected=None, timeout=30, decode_json=False)
    return got, dead


def _reasons(dead: list[dict]) -> list[str]:
    return [dict(r["headers"])["weir.reason"].decode() for r in dead]


def _readings(n: int) -> list[dict]:
    return [{"tag": f"t{i % 4}", "n": i, "value": i / 2} for i in range(n)]


def test_avro_round_trip_and_undecodable_records_go_to_the_dlq(
    kafka_bootstrap, new_topic, schema_registry
):
    src, out = new_topic(partitions=2), new_topic()
    client = SchemaRegistryClient({"url": schema_registry})
    write = AvroSerializer(client, AVRO_V1)
    ctx = SerializationContext(src, MessageField.VALUE)
    good = [write(r, ctx) for r in _readings(50)]
    bad = [b"not avro", b"\x00\x7f\xff\xff\xff\x02"]  # no magic byte; an unknown schema id
    _produce(kafka_bootstrap, src, good[:25] + bad + good[25:])

    got, dead = _run(kafka_bootstrap, schema_registry, src, out, "avro", expected=50)

    read = AvroDeserializer(client)
    out_ctx = SerializationContext(out, MessageField.VALUE)
    values = sorted((read(r["value"], out_ctx) for r in got), key=lambda v: v["n"])
    assert values == [{**r, "double": r["value"] * 2} for r in _readings(50)]
    registered = client.get_latest_version(f"{out}-value").schema.schema_str
    assert json.loads(registered)["name"] == json.loads(AVRO_OUT)["name"], "the sink registered"
    assert sorted(r["value"] for r in dead) == sorted(bad), "each bad record, as it was"
    assert _reasons(dead) == ["decode", "decode"]


def test_avro_schema_evolution_old_and_new_records_read_with_the_new_schema(
    kafka_bootstrap, new_topic, schema_registry
):
    src, out = new_topic(), new_topic()
    client = SchemaRegistryClient({"url": schema_registry})
    ctx = SerializationContext(src, MessageField.VALUE)
    v1 = [AvroSerializer(client, AVRO_V1)(r, ctx) for r in _readings(20)]
    newer = [{**r, "n": r["n"] + 20, "unit": "F"} for r in _readings(20)]
    v2 = [AvroSerializer(client, AVRO_V2)(r, ctx) for r in newer]
    versions = client.get_versions(f"{src}-value")
    assert len(versions) == 2, "the evolved schema is a second version of the subject"
    _produce(kafka_bootstrap, src, v1 + v2)

    got, dead = _run(kafka_bootstrap, schema_registry, src, out, "avro", 40, reader="v2")

    values = {json.loads(r["value"])["n"]: json.loads(r["value"]) for r in got}
    assert sorted(values) == list(range(40)) and not dead
    assert {values[n]["unit"] for n in range(20)} == {"C"}, "v1 records get v2's default"
    assert {values[n]["unit"] for n in range(20, 40)} == {"F"}, "v2 records keep theirs"


def test_protobuf_round_trip(kafka_bootstrap, new_topic, schema_registry):
    src, out = new_topic(), new_topic()
    client = SchemaRegistryClient({"url": schema_registry})
    write = ProtobufSerializer(Reading, client)
    ctx = SerializationContext(src, MessageField.VALUE)
    readings = [{"tag": f"t{i % 4}", "n": i, "value": i / 2} for i in range(30)]
    _produce(kafka_bootstrap, src, [write(Reading(**r), ctx) for r in readings])

    got, dead = _run(kafka_bootstrap, schema_registry, src, out, "protobuf", expected=30)

    read = ProtobufDeserializer(Reading, {})
    out_ctx = SerializationContext(out, MessageField.VALUE)
    messages = sorted((read(r["value"], out_ctx) for r in got), key=lambda m: m.n)
    assert [(m.tag, m.n, m.value, m.double) for m in messages] == [
        (r["tag"], r["n"], r["value"], r["value"] * 2) for r in readings
    ]
    assert not dead


def test_json_schema_round_trip_and_invalid_records_go_to_the_dlq(
    kafka_bootstrap, new_topic, schema_registry
):
    src, out = new_topic(), new_topic()
    client = SchemaRegistryClient({"url": schema_registry})
    write = JSONSerializer(JSON_SCHEMA, client, conf={"validate": False})
    ctx = SerializationContext(src, MessageField.VALUE)
    readings = _readings(30)
    invalid = write({"tag": "x", "n": "not a number", "value": 1}, ctx)
    _produce(kafka_bootstrap, src, [write(r, ctx) for r in readings] + [invalid])

    got, dead = _run(kafka_bootstrap, schema_registry, src, out, "jsonschema", expected=30)

    read = JSONDeserializer(None, schema_registry_client=client)
    out_ctx = SerializationContext(out, MessageField.VALUE)
    values = sorted((read(r["value"], out_ctx) for r in got), key=lambda v: v["n"])
    assert values == [{**r, "double": r["value"] * 2} for r in readings]
    assert [r["value"] for r in dead] == [invalid] and _reasons(dead) == ["decode"]
