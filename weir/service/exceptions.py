"""Errors the worker reports to its user as one line (no traceback)."""

from __future__ import annotations


class WeirError(Exception):
    """Base of user-facing errors: ``str(err)`` is the whole message."""

    exit_code = 2


class ConfigError(WeirError):
    """A flag, environment variable or config-file key has a bad value."""


class JobLoadError(WeirError):
    """The job file cannot be loaded or does not define a runnable job."""


class KafkaUnavailable(WeirError):
    """Kafka cannot be reached: an outage, not a usage error. Exit code 3, which
    ``--processes``, Docker and Kubernetes restart on."""

    exit_code = 3


class ClientStuck(KafkaUnavailable):
    """A Kafka client call ignored its timeout and never returned: in-process recovery
    is not safe (librdkafka may still act on the abandoned call), so the worker exits
    with code 3 to be restarted; the fresh process fences the stuck producer."""


class TopicsMismatch(WeirError):
    """A topic the job needs is missing, or has a partition count its state cannot
    follow: no restart fixes that."""


class StateMismatch(WeirError):
    """The group holds keyed state that no stateful operator of the job claims (an
    operator renamed or removed): starting would leave it behind and begin empty.
    Exit code 2: a restart does not fix it, a decision does (`service.upgrade`)."""


class WorkerFailed(WeirError):
    """The worker stopped because processing failed (error policy ``fail``, fencing, ...)."""

    exit_code = 1


class DuplicateWorker(WeirError):
    """Another live worker uses this worker id (its state directory or its
    transactional id): a deployment mistake, not to be restarted."""


class ShutdownOverran(WorkerFailed):
    """A clean stop did not finish within its time budget; the message names the step."""
