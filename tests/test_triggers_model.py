"""Specs for the `triggers` list of a definition (DESIGN.md, "Format version 1, additions"):
schedule and event entries from YAML, JSON and the Python builder, and every bad input with
the exact path and message a user sees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.errors import DefinitionError
from orchestrator.model.definition import (
    Workflow,
    dump_definition,
    from_stored,
    load_definition,
    parse_text,
)
from orchestrator.model.triggers import Trigger

STEPS = [{"id": "a", "plugin": "builtin", "method": "echo"}]

YAML = """
id: media_batch
triggers:
  - schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}
    inputs: {mode: nightly}
    catchup: false
  - schedule: {every: 300}
    name: often
    catchup: true
  - event: files.uploaded
    filter: "event.payload.count > 0"
    inputs: {folder: "{{ event.payload.folder }}"}
steps:
  - {id: a, plugin: builtin, method: echo}
"""


def problems(triggers: Any) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        load_definition({"id": "w", "steps": STEPS, "triggers": triggers})
    return list(info.value.problems)


def test_a_definition_without_triggers_has_none() -> None:
    assert load_definition({"id": "w", "steps": STEPS}).triggers == ()
    assert "triggers" not in dump_definition(load_definition({"id": "w", "steps": STEPS}))


def test_yaml_triggers_load_to_frozen_entries_with_defaults() -> None:
    d = load_definition(parse_text(YAML))
    nightly, often, uploaded = d.triggers
    assert nightly == Trigger(
        kind="schedule",
        name="schedule-0",
        inputs={"mode": "nightly"},
        cron="0 2 * * *",
        timezone="Europe/Berlin",
    )
    assert (often.name, often.every, often.cron, often.timezone, often.catchup) == (
        "often",
        300,
        None,
        "UTC",
        True,
    )
    assert uploaded.kind == "event" and uploaded.name == "files.uploaded"
    assert uploaded.filter == "event.payload.count > 0"
    assert uploaded.inputs == {"folder": "{{ event.payload.folder }}"}
    with pytest.raises(AttributeError):
        nightly.name = "x"  # type: ignore[misc]


def test_yaml_json_builder_and_stored_forms_agree() -> None:
    from_yaml = load_definition(parse_text(YAML))
    from_json = load_definition(json.loads(json.dumps(dump_definition(from_yaml))))
    built = (
        Workflow("media_batch")
        .schedule(cron="0 2 * * *", timezone="Europe/Berlin", inputs={"mode": "nightly"})
        .schedule(every=300, name="often", catchup=True)
        .on_event(
            "files.uploaded",
            filter="event.payload.count > 0",
            inputs={"folder": "{{ event.payload.folder }}"},
        )
        .step("a", "builtin", "echo")
        .build()
    )
    stored = from_stored(dump_definition(from_yaml))
    assert from_yaml.triggers == from_json.triggers == built.triggers == stored.triggers


@pytest.mark.parametrize(
    ("triggers", "expected"),
    [
        (
            [{"schedule": {"cron": "61 * * * *"}}],
            (
                "triggers[0].schedule.cron",
                "invalid cron expression '61 * * * *': [61 * * * *] is not acceptable, out of range",
            ),
        ),
        (
            [{"schedule": {"cron": "0 2 * *"}}],
            (
                "triggers[0].schedule.cron",
                "invalid cron expression '0 2 * *': cron has 5 fields (minute hour day-of-month "
                "month day-of-week), this has 4; use `every` for seconds",
            ),
        ),
        (
            [{"schedule": {"cron": "0 0 31 2 *"}}],
            (
                "triggers[0].schedule.cron",
                "invalid cron expression '0 0 31 2 *': it never fires (no date matches it)",
            ),
        ),
        (
            [{"schedule": {"cron": "0 2 * * *", "timezone": "Mars/Olympus"}}],
            (
                "triggers[0].schedule.timezone",
                "unknown time zone 'Mars/Olympus' (an IANA name like Europe/Berlin or UTC)",
            ),
        ),
        (
            [{"schedule": {"cron": "0 2 * * *", "timezone": "../../etc/passwd"}}],
            (
                "triggers[0].schedule.timezone",
                "unknown time zone '../../etc/passwd' (an IANA name like Europe/Berlin or UTC)",
            ),
        ),
        (
            [{"schedule": {"every": 0}}],
            ("triggers[0].schedule.every", "must be a whole number of seconds >= 1"),
        ),
        (
            [{"schedule": {"every": 2.5}}],
            ("triggers[0].schedule.every", "must be a whole number"),
        ),
        (
            [{"schedule": {"cron": "* * * * *", "every": 60}}],
            ("triggers[0].schedule", "give either cron or every, not both"),
        ),
        (
            [{"schedule": {}}],
            ("triggers[0].schedule", "needs cron (e.g. '0 2 * * *') or every (seconds)"),
        ),
        (
            [{"schedule": {"every": 60, "timezone": "Europe/Berlin"}}],
            (
                "triggers[0].schedule.timezone",
                "timezone applies to cron only: every counts seconds from 1970-01-01T00:00Z",
            ),
        ),
        (
            [{"schedule": {"evry": 60}}],
            ("triggers[0].schedule.evry", "unknown field (did you mean 'every'?)"),
        ),
        (
            [{"event": "files.uploaded", "filter": "event.payload.count >"}],
            (
                "triggers[0].filter",
                "unexpected end of expression at column 22 in 'event.payload.count >'",
            ),
        ),
        (
            [{"event": "files.uploaded", "filter": "inputs.count > 0"}],
            (
                "triggers[0].filter",
                "unknown name 'inputs' (an event trigger reads only event.name, event.payload,"
                " event.key)",
            ),
        ),
        (
            [{"event": "files.uploaded", "inputs": {"f": "{{ event.body }}"}}],
            ("triggers[0].inputs.f", "event has no field 'body' (fields: name, payload, key)"),
        ),
        (
            [{"event": "files uploaded"}],
            ("triggers[0].event", "must match [A-Za-z0-9][A-Za-z0-9_.:-]*"),
        ),
        (
            [{"schedule": {"every": 5}, "event": "x"}],
            ("triggers[0]", "a trigger is a schedule or an event, not both"),
        ),
        ([{}], ("triggers[0]", "needs `schedule: {cron | every}` or `event: <name>`")),
        (
            [{"schedule": {"every": 5}, "filter": "true"}],
            ("triggers[0].filter", "filter applies to event triggers only"),
        ),
        (
            [{"event": "x", "catchup": True}],
            ("triggers[0].catchup", "catchup applies to schedule triggers only"),
        ),
        (
            [{"schedule": {"every": 5}, "inputs": {"day": "{{ run.id }}"}}],
            (
                "triggers[0].inputs.day",
                "schedule inputs are plain values (templates may read `event` in event triggers only)",
            ),
        ),
        (
            [{"event": "x"}, {"event": "x"}],
            (
                "triggers[1]",
                "duplicate trigger name 'x' (first used by triggers[0]); give one a `name`",
            ),
        ),
        (
            [{"schedule": {"every": 5}, "name": "n"}, {"schedule": {"every": 6}, "name": "n"}],
            (
                "triggers[1].name",
                "duplicate trigger name 'n' (first used by triggers[0]); give one a `name`",
            ),
        ),
        ("nightly", ("triggers", "must be a list")),
        ([5], ("triggers[0]", "must be a mapping")),
        ([{"schedule": "0 2 * * *"}], ("triggers[0].schedule", "must be a mapping")),
        (
            [{"schedule": {"every": 5}, "catchup": "yes please"}],
            ("triggers[0].catchup", "must be true or false"),
        ),
    ],
)
def test_bad_triggers_are_refused_with_their_path(triggers: Any, expected: tuple[str, str]) -> None:
    assert expected in problems(triggers)


def test_every_problem_of_every_trigger_is_reported_at_once() -> None:
    found = problems(
        [
            {"schedule": {"every": 0}},
            {"schedule": {"cron": "nope"}},
            {"event": "e", "filter": "event.payload >"},
        ]
    )
    paths = [p for p, _ in found]
    assert paths == [
        "triggers[0].schedule.every",
        "triggers[1].schedule.cron",
        "triggers[2].filter",
    ]


def test_the_builder_reports_trigger_errors_through_the_same_schema() -> None:
    with pytest.raises(DefinitionError) as info:
        Workflow("w").schedule(cron="0 2 * * *", timezone="Nowhere/Land").step(
            "a", "builtin", "echo"
        ).build()
    assert info.value.problems == [
        (
            "triggers[0].schedule.timezone",
            "unknown time zone 'Nowhere/Land' (an IANA name like Europe/Berlin or UTC)",
        )
    ]


def test_huge_trigger_fields_are_refused_not_processed() -> None:
    found = problems([{"schedule": {"cron": "1 " * 500}}, {"event": "e" * 5000}])
    assert (
        "triggers[0].schedule.cron",
        "is 1000 characters long; at most 200 are allowed",
    ) in found
    assert ("triggers[1].event", "must be 1 to 200 characters") in found


def test_describe_says_what_fires() -> None:
    d = load_definition(parse_text(YAML))
    assert [t.describe() for t in d.triggers] == [
        "cron '0 2 * * *' (Europe/Berlin)",
        "every 300 s",
        "event files.uploaded",
    ]
