"""Workers under network and broker faults, each test on its own broker (``own_kafka``).

1. The harness itself: a client bootstrapped at the proxy reaches the broker only
   through it (metadata hands out the proxy's address), and stall / resume / reset do
   what they say.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer

from tests.kafka_fixture import OwnKafka, consume_all


def test_proxy_carries_every_connection(own_kafka: OwnKafka) -> None:
    """Metadata through the proxy names the proxy; a stall holds deliveries, resume
    releases them, a reset makes the client reconnect through the proxy again."""
    topic = own_kafka.new_topic(1)
    proxy = own_kafka.proxy
    consumer = Consumer(
        {"bootstrap.servers": own_kafka.proxied_bootstrap, "group.id": uuid.uuid4().hex}
    )
    try:
        brokers = consumer.list_topics(timeout=10).brokers
    finally:
        consumer.close()
    assert [(b.host, b.port) for b in brokers.values()] == [("127.0.0.1", proxy.port)]

    delivered: list[int] = []
    producer = Producer(
        {
            "bootstrap.servers": own_kafka.proxied_bootstrap,
            "linger.ms": 0,
            "on_delivery": lambda err, msg: err is None and delivered.append(msg.offset()),
        }
    )
    producer.produce(topic, b"0")
    assert producer.flush(10) == 0
    proxy.stall()
    producer.produce(topic, b"1")
    assert producer.flush(2) == 1, "delivered through a stalled proxy"
    proxy.resume()
    assert producer.flush(10) == 0, "not delivered after resume"
    accepted = proxy.accepted
    proxy.reset()
    assert proxy.connections == 0
    producer.produce(topic, b"2")
    assert producer.flush(15) == 0, "not delivered after a reset"
    assert proxy.accepted > accepted, "the producer did not reconnect through the proxy"
    assert delivered == [0, 1, 2]
    values = [r["value"] for r in consume_all(own_kafka.bootstrap, topic, 3, 15)]
    assert values == [0, 1, 2]


def test_broker_restarts_on_its_data(own_kafka: OwnKafka) -> None:
    """stop and kill keep the data dir; start again serves the same topic on the same
    address, also through the proxy."""
    topic = own_kafka.new_topic(1)
    producer = Producer({"bootstrap.servers": own_kafka.bootstrap, "enable.idempotence": True})
    producer.produce(topic, b"1")
    assert producer.flush(10) == 0
    own_kafka.stop()
    own_kafka.start()
    producer.produce(topic, b"2")
    assert producer.flush(30) == 0
    own_kafka.kill()
    started = time.monotonic()
    own_kafka.start()
    producer.produce(topic, b"3")
    assert producer.flush(30) == 0, f"not delivered {time.monotonic() - started:.0f}s after kill"
    values = [r["value"] for r in consume_all(own_kafka.proxied_bootstrap, topic, 3, 20)]
    assert values == [1, 2, 3]
