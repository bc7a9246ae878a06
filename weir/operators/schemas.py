"""Formats with a schema registry: Avro, Protobuf and JSON Schema.

Records use the Confluent wire format (a zero byte, the 4-byte schema id, the
payload), so they interoperate with Kafka Streams, Flink, ksqlDB and Connect.
The work is done by ``confluent_kafka.schema_registry`` (install Weir's
``schemas`` extra); these classes bind it to Weir's `Serde` protocol:

1. The worker's registry settings (``--schema-registry-url`` and
   ``--schema-registry KEY=VALUE``) reach each operator in its `SerdeContext`.
2. An operator binds its serde once (``decoder``/``encoder``): one registry
   client per process and settings (it caches schemas by id), one Confluent
   (de)serializer per operator instance, the subject ``<topic>-value`` or
   ``<topic>-key`` (TopicNameStrategy; ``conf`` may choose another).
3. Per record: the bound function. Reading, a record's writer schema is looked
   up by its id; with a *reader* schema (``Avro(schema)`` on a source) the
   record is resolved to it, which is how a job reads old and new versions of
   an evolving schema alike. Writing, the schema is registered on first use
   (``auto.register.schemas``, on by default).

Errors: a record that is not in the wire format, names an unknown schema id
or does not match its schema fails to decode (dead-letter topic, reason
``decode``). A registry that cannot be reached, or answers 5xx, raises
`SerdeUnavailable`: the slot restarts from the last checkpoint instead.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from weir.operators.exceptions import JobDefinitionError
from weir.operators.formats import Decoder, Encoder, SerdeContext, SerdeUnavailable

_clients: dict[tuple[tuple[str, str], ...], Any] = {}
_clients_lock = threading.Lock()


def registry_client(settings: Mapping[str, str]) -> Any:
    """The process's `SchemaRegistryClient` for these settings (shared: it caches
    schemas by id, so each is fetched once per process)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    key = tuple(sorted(settings.items()))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = SchemaRegistryClient(dict(settings))
        return client


def _require(module: str, what: str) -> None:
    """Fail at job definition, with the fix, when an optional dependency is missing."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise JobDefinitionError(
            f"{what} needs the schema registry extras ({exc.name} is missing);"
            " install them with: pip install 'weir[schemas]'"
        ) from None


def _schema_text(schema: str | Mapping[str, Any] | None, what: str) -> str | None:
    if schema is None or isinstance(schema, str):
        return schema
    if isinstance(schema, Mapping):
        return json.dumps(schema)
    raise JobDefinitionError(f"{what}(schema={schema!r}): expected a JSON string, a dict or None")


def unavailable(exc: BaseException) -> bool:
    """Is ``exc`` the registry being out of reach (not the record's fault)?

    A 5xx answer, or a transport error of the HTTP client (httpx, or its fork
    httpx2 on newer Pythons: matched by its ``TransportError`` base class name,
    so either works).
    """
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        return exc.http_status_code >= 500 or exc.http_status_code < 0
    return any(cls.__name__ == "TransportError" for cls in type(exc).__mro__)


class RegistrySerde:
    """Base of the registry formats: binds a Confluent serializer and deserializer
    per operator (steps in the module docstring). ``conf`` is passed to them
    (e.g. ``{"auto.register.schemas": False, "use.latest.version": True}``)."""

    needs_registry = True
    kind = ""

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        if conf is not None and not isinstance(conf, Mapping):
            raise JobDefinitionError(f"{self.kind}(conf={conf!r}): expected a dict of settings")
        self.conf = dict(conf or {})

    # -- what each format supplies --------------------------------------------
    def _serializer(self, client: Any) -> Callable[[Any, Any], bytes]:
        raise NotImplementedError

    def _deserializer(self, client: Any) -> Callable[[bytes, Any], Any]:
        raise NotImplementedError

    def writer_problem(self) -> str | None:
        """Why this serde cannot write records (None: it can); checked by ``sink()``."""
        return None

    # -- Serde ------------------------------------------------------------------
    def decoder(self, ctx: SerdeContext) -> Decoder:
        deserialize = self._deserializer(self._client(ctx))
        sctx = _context(ctx)

        def decode(data: bytes) -> Any:
            try:
                return deserialize(data, sctx)
            except Exception as exc:
                if unavailable(exc):
                    raise SerdeUnavailable(f"schema registry unavailable: {exc}") from exc
                raise

        return decode

    def encoder(self, ctx: SerdeContext) -> Encoder:
        serialize = self._serializer(self._client(ctx))
        sctx = _context(ctx)

        def encode(value: Any) -> bytes:
            try:
                return serialize(value, sctx)
            except Exception as exc:
                if unavailable(exc):
                    raise SerdeUnavailable(f"schema registry unavailable: {exc}") from exc
                raise

        return encode

    def serialize(self, value: Any, ctx: SerdeContext) -> bytes:
        """One value (binds a serializer per call: operators use `encoder` instead)."""
        return self.encoder(ctx)(value)

    def deserialize(self, data: bytes, ctx: SerdeContext) -> Any:
        """One record (binds a deserializer per call: operators use `decoder`)."""
        return self.decoder(ctx)(data)

    def _client(self, ctx: SerdeContext) -> Any:
        if ctx.registry is None:
            raise SerdeUnavailable(
                f"{self!r} on topic {ctx.topic!r} needs a schema registry; set"
                " --schema-registry-url"
            )
        return registry_client(ctx.registry)


def _context(ctx: SerdeContext) -> Any:
    from confluent_kafka.serialization import MessageField, SerializationContext

    return SerializationContext(ctx.topic, MessageField.KEY if ctx.is_key else MessageField.VALUE)


class Avro(RegistrySerde):
    """Avro records as dicts.

    ``schema`` (JSON text or a dict): on a sink, the writer schema, registered
    under the topic's subject on first use; on a source, an optional *reader*
    schema that every record is resolved to (fields added with defaults, removed
    fields dropped: Avro's schema evolution). Without it a source decodes each
    record with the schema it was written with.
    """

    kind = "Avro"

    def __init__(
        self,
        schema: str | Mapping[str, Any] | None = None,
        *,
        conf: Mapping[str, Any] | None = None,
    ) -> None:
        _require("fastavro", "Avro")
        super().__init__(conf)
        self.schema = _schema_text(schema, "Avro")

    def __repr__(self) -> str:
        return "Avro()" if self.schema is None else "Avro(schema)"

    def writer_problem(self) -> str | None:
        if self.schema is None and not self.conf.get("use.latest.version"):
            return "Avro() needs a schema to write, or conf={'use.latest.version': True}"
        return None

    def _serializer(self, client: Any) -> Callable[[Any, Any], bytes]:
        from confluent_kafka.schema_registry.avro import AvroSerializer

        return AvroSerializer(client, self.schema, conf=self.conf)

    def _deserializer(self, client: Any) -> Callable[[bytes, Any], Any]:
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        return AvroDeserializer(client, self.schema, conf=self.conf)


class JsonSchema(RegistrySerde):
    """JSON values checked against a JSON Schema.

    ``schema`` (JSON text or a dict): on a sink, the schema values are validated
    against and registered under; on a source, the schema records are validated
    against (None: each record's own writer schema).
    """

    kind = "JsonSchema"

    def __init__(
        self,
        schema: str | Mapping[str, Any] | None = None,
        *,
        conf: Mapping[str, Any] | None = None,
    ) -> None:
        _require("jsonschema", "JsonSchema")
        super().__init__(conf)
        self.schema = _schema_text(schema, "JsonSchema")

    def __repr__(self) -> str:
        return "JsonSchema()" if self.schema is None else "JsonSchema(schema)"

    def writer_problem(self) -> str | None:
        if self.schema is None and not self.conf.get("use.latest.version"):
            return "JsonSchema() needs a schema to write, or conf={'use.latest.version': True}"
        return None

    def _serializer(self, client: Any) -> Callable[[Any, Any], bytes]:
        from confluent_kafka.schema_registry.json_schema import JSONSerializer

        return JSONSerializer(self.schema, client, conf=self.conf)

    def _deserializer(self, client: Any) -> Callable[[bytes, Any], Any]:
        from confluent_kafka.schema_registry.json_schema import JSONDeserializer

        return JSONDeserializer(self.schema, schema_registry_client=client, conf=self.conf)


class Protobuf(RegistrySerde):
    """Protocol Buffers messages of ``message_type`` (a generated message class).

    Sources give dicts (field names as in the .proto file, every field present)
    unless ``as_dict=False``, which gives the message objects; sinks take either.
    The message's schema is registered under the topic's subject on first use.
    """

    kind = "Protobuf"

    def __init__(
        self,
        message_type: type,
        *,
        as_dict: bool = True,
        conf: Mapping[str, Any] | None = None,
    ) -> None:
        _require("google.protobuf", "Protobuf")
        if not hasattr(message_type, "DESCRIPTOR"):
            raise JobDefinitionError(
                f"Protobuf({message_type!r}): expected a generated protobuf message class"
            )
        super().__init__(conf)
        self.message_type = message_type
        self.as_dict = as_dict

    def __repr__(self) -> str:
        return f"Protobuf({self.message_type.DESCRIPTOR.full_name})"

    def _serializer(self, client: Any) -> Callable[[Any, Any], bytes]:
        from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
        from google.protobuf.json_format import ParseDict

        serializer = ProtobufSerializer(self.message_type, client, conf=self.conf)
        message_type = self.message_type

        def serialize(value: Any, sctx: Any) -> bytes:
            if isinstance(value, Mapping):
                value = ParseDict(value, message_type())
            return serializer(value, sctx)

        return serialize

    def _deserializer(self, client: Any) -> Callable[[bytes, Any], Any]:
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
        from google.protobuf.json_format import MessageToDict

        deserializer = ProtobufDeserializer(self.message_type, self.conf, client)
        if not self.as_dict:
            return deserializer

        def deserialize(data: bytes, sctx: Any) -> Any:
            message = deserializer(data, sctx)
            return MessageToDict(
                message,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )

        return deserialize
