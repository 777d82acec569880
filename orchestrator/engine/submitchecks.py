"""What a submit checks and warns about before it records a run, without I/O: the trigger fields,
the queues no live worker consumes, and the steps RabbitMQ's consumer_timeout would cut
(Client.submit reads the fleet and the settings, then asks these)."""

from __future__ import annotations

from orchestrator.errors import DefinitionError
from orchestrator.model.definition import Definition
from orchestrator.records import TRIGGER_TYPES
from orchestrator.settings import Settings

MAX_NAMED = 5  # steps a warning names before "and N more"


MAX_TRIGGER_TEXT = 200


def check_trigger(trigger_type: str, name: str | None, ref: str | None) -> None:
    """Refuse a trigger_type outside TRIGGER_TYPES, or a name or ref that is not short text."""
    problems = []
    if trigger_type not in TRIGGER_TYPES:
        problems.append(
            ("trigger_type", f"must be one of {', '.join(TRIGGER_TYPES)}, not {trigger_type!r}")
        )
    for field, value in (("trigger_name", name), ("trigger_ref", ref)):
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TRIGGER_TEXT):
            problems.append((field, f"must be text of at most {MAX_TRIGGER_TEXT} characters"))
    if problems:
        raise DefinitionError(problems)


def _named(ids: list[str]) -> str:
    return ", ".join(ids[:MAX_NAMED]) + (
        f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else ""
    )


def consumer_timeout_warnings(defn: Definition, settings: Settings) -> list[str]:
    """On an AMQP broker: the steps of ``defn`` that may hold their message (acks_late) longer
    than RabbitMQ's consumer_timeout, which closes the worker's channel and delivers the step
    again (docs/operations.md, "RabbitMQ as broker"). A step without a timeout is not known to
    be long: the worker's start-up warning covers it."""
    limit = settings.amqp_consumer_timeout
    if not settings.broker_is_amqp or limit <= 0:
        return []
    grace = settings.hard_timeout_grace
    running = [s.id for s in defn.steps if s.timeout and s.timeout + grace > limit]
    waiting = [
        s.id
        for s in defn.steps
        if s.retries and max(s.retry_countdown(a) for a in range(1, s.retries + 1)) > limit
    ]
    fix = (
        f"the AMQP broker's consumer_timeout ({limit} s, CANVASFLOW_AMQP_CONSUMER_TIMEOUT) "
        f"closes the channel of a worker holding a message longer and delivers the step again; "
        f"raise consumer_timeout in rabbitmq.conf and CANVASFLOW_AMQP_CONSUMER_TIMEOUT with it"
    )
    out = []
    if running:
        out.append(
            f"step{'s' if len(running) > 1 else ''} {_named(running)}: a timeout (plus "
            f"{grace} s grace) longer than {limit} s: {fix}, or lower the timeout"
        )
    if waiting:
        out.append(
            f"step{'s' if len(waiting) > 1 else ''} {_named(waiting)}: a retry delay longer than "
            f"{limit} s (a worker holds the retry's message while it waits): {fix}, or lower "
            f"retry_delay_max"
        )
    return out


def unserved_queues(defn: Definition, live: set[str], default_queue: str) -> list[str]:
    """One line for each queue that a run of ``defn`` needs and no live worker consumes: the
    queues of its steps, and the default queue, where canvasflow's own tasks settle the run."""
    needs: dict[str, list[str]] = {}
    for step in defn.steps:
        needs.setdefault(step.queue or default_queue, []).append(step.id)
    needs.setdefault(default_queue, [])
    out = []
    for queue, steps in needs.items():
        if queue in live:
            continue
        start = f"start one with `canvasflow worker -Q {queue}`"
        if not steps:
            out.append(
                f"no live worker consumes queue '{queue}', where canvasflow's own tasks settle "
                f"the run: it does not finish until one does; {start}"
            )
            continue
        names = ", ".join(steps[:MAX_NAMED]) + (
            f" and {len(steps) - MAX_NAMED} more" if len(steps) > MAX_NAMED else ""
        )
        many = len(steps) > 1
        out.append(
            f"no live worker consumes queue '{queue}' (step{'s' if many else ''} {names}): "
            f"{'they wait' if many else 'it waits'} PENDING until one does; {start}"
        )
    return out
