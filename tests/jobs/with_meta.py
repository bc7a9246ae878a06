"""Test job: record metadata in functions, keys and headers set by the sink, and a
user's own Serde.

Values are ``tag;n`` text (`SemicolonSerde`), keys UTF-8 (``key_format="str"``).
The map copies the metadata into the value; the filter drops records whose
``drop`` header is set; the sink keys each record by ``tag`` and passes the input
headers on with one more (``seen-offset``)."""

import os

from weir import Job, RecordMeta, SerdeContext


class SemicolonSerde:
    """``tag;n`` text <-> ``{"tag": tag, "n": n}``."""

    def serialize(self, value: dict, ctx: SerdeContext) -> bytes:
        return f"{value['tag']};{value['n']}".encode()

    def deserialize(self, data: bytes, ctx: SerdeContext) -> dict:
        tag, n = data.decode().split(";")
        return {"tag": tag, "n": int(n), "topic": ctx.topic}


def describe(value: dict, meta: RecordMeta) -> dict:
    return {
        **value,
        "meta": {
            "key": meta.key,
            "timestamp": meta.timestamp,
            "topic": meta.topic,
            "partition": meta.partition,
            "offset": meta.offset,
            "source": (meta.header("source") or b"").decode(),
        },
    }


job = Job("with-meta")
(
    job.source(os.environ["WEIR_TEST_IN"], value=SemicolonSerde(), key_format="str")
    .filter(lambda v, meta: meta.header("drop") is None, with_meta=True)
    .map(describe, with_meta=True)
    .sink(
        os.environ["WEIR_TEST_OUT"],
        key=lambda v, meta: v["tag"],
        key_format="str",
        headers=lambda v, meta: [*meta.headers, ("seen-offset", str(meta.offset))],
        with_meta=True,
    )
)
