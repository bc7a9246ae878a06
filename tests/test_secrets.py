"""Secrets given with ``--kafka`` stay secret: never on a child's command line (visible
to every user of the machine), never in an error message."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from weir.service.clients import ClientSettings
from weir.service.config import load_config
from weir.service.exceptions import ConfigError
from weir.service.supervisor import child_argv, child_env

SECRET = "hunter2-very-secret"


def test_children_get_kafka_settings_in_their_environment_not_their_command_line():
    argv = ["run", "job.py", "--kafka", f"sasl.password={SECRET}", "--slots", "2",
            f"--kafka=producer.sasl.username={SECRET}u", "--processes", "2"]  # fmt: skip
    config = load_config(
        {"kafka": [f"sasl.password={SECRET}", f"producer.sasl.username={SECRET}u"]}
    )
    cmd = child_argv(argv, 1, config)
    assert not any(SECRET in arg for arg in cmd), cmd
    assert cmd[-4:] == ["--processes", "1", "--process-index", "1"] and "--slots" in cmd
    env = child_env(config)
    child = load_config({}, {k: v for k, v in env.items() if k.startswith("WEIR_")})
    assert child.kafka == config.kafka  # the child sees the same settings


def test_a_refused_client_setting_names_the_key_not_the_secret():
    config = load_config({"kafka": [f"sasl.password={SECRET}", f"security.protocol={SECRET}"]})
    settings = ClientSettings(config, "g", "g.w")
    with pytest.raises(ConfigError) as err:
        settings.open(Producer, settings.producer({}, lambda *_: None))
    message = str(err.value)
    assert SECRET not in message and "security.protocol" in message, message
