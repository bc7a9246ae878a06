"""Shared fixtures: a real Kafka broker (tests/kafka_fixture.py), a schema registry
(tests/schema_registry.py) and worker helpers.

Long fault and soak tests are marked ``slow``; they run with ``--run-slow`` or
``WEIR_RUN_SLOW=1``.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.kafka_fixture", "tests.schema_registry"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the long fault/soak tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("WEIR_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or WEIR_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
