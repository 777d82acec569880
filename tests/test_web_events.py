"""The shapes of a `log` event the dashboard reads (batches, columns, one line) and what clients get."""

from __future__ import annotations

from web.events import client_event, log_lines


def test_a_batch_of_lines_is_passed_on_row_by_row_with_the_event_time_for_a_line_without_one():
    data = {
        "lines": [
            [1.5, "INFO", "first", None, None, None, None],
            [None, "ERROR", "second", "row", "/rows", "7", "order"],
        ]
    }
    assert log_lines(data, 9.0) == [
        [1.5, "INFO", "first", None, None, None, None],
        [9.0, "ERROR", "second", "row", "/rows", "7", "order"],
    ]


def test_the_one_line_shape_of_older_producers_becomes_a_batch_of_one():
    data = {"message": "old style", "level": "WARNING", "entity_tag": "t", "entity_route": None}
    assert log_lines(data, 3.0) == [[3.0, "WARNING", "old style", "t", None, None, None]]


def test_the_column_shape_is_read_line_by_line():
    data = {
        "n": 2,
        "ts": [1_000_000, 2_500_000],
        "message": ["a", "b"],
        "level": ["INFO", "DEBUG"],
        "entity_id": ["x", None],
    }
    assert log_lines(data, 0.0) == [
        [1.0, "INFO", "a", None, None, "x", None],
        [2.5, "DEBUG", "b", None, None, None, None],
    ]


def test_an_unreadable_log_event_becomes_one_error_line_instead_of_breaking_the_relay():
    (line,) = log_lines({"lines": [[1.0]], "n": 1} | {"lines": 5}, 2.0)
    assert line[1] == "ERROR" and "unreadable log event" in line[2]
    (line,) = log_lines("garbage", 2.0)
    assert line[0] == 2.0 and "unreadable" in line[2]


def test_clients_get_log_events_as_lines_and_other_events_unchanged():
    e = {
        "run": "r",
        "seq": 4,
        "type": "log",
        "step": "a",
        "status": None,
        "ts": 5.0,
        "data": {"message": "hi", "level": "INFO"},
    }
    assert client_event(e)["data"] == {"lines": [[5.0, "INFO", "hi", None, None, None, None]]}
    assert e["data"] == {"message": "hi", "level": "INFO"}  # the original is not changed
    other = {"run": "r", "seq": 5, "type": "step_completed", "step": "a", "data": {"attempt": 1}}
    assert client_event(other) is other
