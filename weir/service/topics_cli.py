"""``weir topics create|list|describe|delete``: Kafka topics from the command line.

The local development broker ships only Kafka's jars, not its shell tools, so the
commands a job needs before it runs (create its source and sink topics) are
Weir's own. Every call goes through the admin client with a bounded timeout and
ends in one line on failure, never a traceback.
"""

from __future__ import annotations

import argparse
import os

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from weir.service.exceptions import KafkaUnavailable, TopicsMismatch
from weir.service.topics import partition_counts

TIMEOUT_S = 15.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    topics = sub.add_parser("topics", help="create, list, describe or delete Kafka topics")
    topics.add_argument("--bootstrap", default=None, help="default WEIR_BOOTSTRAP or :9092")
    actions = topics.add_subparsers(dest="topics_command", required=True)
    create = actions.add_parser("create", help="create a topic (nothing if it exists)")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=3)
    create.add_argument("--replication", type=int, default=1)
    create.add_argument("--config", action="append", metavar="KEY=VALUE", default=[])
    listing = actions.add_parser("list", help="the topics, with their partition counts")
    describe = actions.add_parser("describe", help="a topic's partitions and settings")
    describe.add_argument("name")
    delete = actions.add_parser("delete", help="delete a topic")
    delete.add_argument("name")
    for action in (create, listing, describe, delete):  # also accepted after the action
        action.add_argument("--bootstrap", default=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    bootstrap = args.bootstrap or os.environ.get("WEIR_BOOTSTRAP", "127.0.0.1:9092")
    command = args.topics_command
    if command == "create":
        config = {}
        for item in args.config:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise TopicsMismatch(f"--config {item!r}: expected KEY=VALUE (a topic setting)")
            config[key] = value
        print(create(bootstrap, args.name, args.partitions, args.replication, config))
        return 0
    admin = _admin(bootstrap)
    if command == "list":
        for name, count in sorted(partition_counts(admin, TIMEOUT_S).items()):
            if not name.startswith("__"):
                print(f"{name}\t{count} partitions")
        return 0
    if command == "describe":
        return _describe(admin, args.name)
    return _delete(admin, args.name)


def _admin(bootstrap: str) -> AdminClient:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {bootstrap} within {TIMEOUT_S:.0f}s ({exc.args[0].str()});"
            " check --bootstrap / WEIR_BOOTSTRAP"
        ) from None
    return admin


def create(
    bootstrap: str,
    name: str,
    partitions: int,
    replication: int = 1,
    config: dict[str, str] | None = None,
) -> str:
    """Create ``name`` unless it exists; says which it was."""
    admin = _admin(bootstrap)
    if name in partition_counts(admin, TIMEOUT_S):
        return f"topic {name} exists"
    topic = NewTopic(name, partitions, replication, config=config or {})
    try:
        admin.create_topics([topic], operation_timeout=TIMEOUT_S)[name].result(TIMEOUT_S)
    except KafkaException as exc:
        raise TopicsMismatch(f"cannot create topic {name!r}: {exc.args[0].str()}") from None
    return f"created topic {name} ({partitions} partitions)"


def _describe(admin: AdminClient, name: str) -> int:
    topic = admin.list_topics(name, timeout=TIMEOUT_S).topics.get(name)
    if topic is None or topic.error is not None:
        raise TopicsMismatch(f"topic {name!r} does not exist")
    print(f"{name}\t{len(topic.partitions)} partitions")
    for p, meta in sorted(topic.partitions.items()):
        print(f"  partition {p}\tleader {meta.leader}\treplicas {meta.replicas}")
    resource = ConfigResource(ResourceType.TOPIC, name)
    configs = admin.describe_configs([resource], request_timeout=TIMEOUT_S)[resource]
    for key, entry in sorted(configs.result(TIMEOUT_S).items()):
        if not entry.is_default:
            print(f"  {key}={entry.value}")
    return 0


def _delete(admin: AdminClient, name: str) -> int:
    try:
        admin.delete_topics([name], operation_timeout=TIMEOUT_S)[name].result(TIMEOUT_S)
    except KafkaException as exc:
        raise TopicsMismatch(f"cannot delete topic {name!r}: {exc.args[0].str()}") from None
    print(f"deleted topic {name}")
    return 0
