"""The relay's stream tail against a real Redis: what it hands on, in which batches."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from orchestrator.keys import Keys
from web.stream import StreamTail


@pytest.fixture
def keys() -> Keys:
    return Keys(f"s{uuid.uuid4().hex[:8]}")


def append(r: redis.Redis, keys: Keys, run: str, seq: int, etype: str = "progress") -> str:
    entry = r.xadd(
        keys.events,
        {
            "run": run,
            "seq": seq,
            "type": etype,
            "step": "a",
            "status": "",
            "ts": f"{1795000000 + seq}",
            "data": '{"fraction": 0.5}',
        },
    )
    return entry.decode()


def test_the_tail_starts_at_the_end_and_hands_on_each_event_once_in_stream_order(
    redis_client, keys
):
    append(redis_client, keys, "old", 1)
    batches: list[list[tuple[str, int]]] = []
    tail = StreamTail(
        redis_client, keys, lambda b: batches.append([(e["run"], e["seq"]) for e in b]), block_ms=50
    )
    assert tail.step() == 0  # what was there before it started is the replay's business
    for seq in (1, 2, 3):
        append(redis_client, keys, "r1", seq)
    append(redis_client, keys, "r2", 1)
    assert tail.step() == 4
    assert batches == [[("r1", 1), ("r1", 2), ("r1", 3), ("r2", 1)]]
    assert tail.step() == 0 and len(batches) == 1


def test_an_event_within_the_window_of_the_last_delivery_waits_for_what_comes_with_it(
    redis_client, keys
):
    batches: list[list[int]] = []
    tail = StreamTail(
        redis_client, keys, lambda b: batches.append([e["seq"] for e in b]), block_ms=50, window=2.0
    )
    tail.step()
    append(redis_client, keys, "r", 1)
    assert tail.step() == 1  # after a quiet spell: out at once, alone
    second = append(redis_client, keys, "r", 2)

    def third_once_the_second_is_read() -> None:
        while tail.last_id != second:
            threading.Event().wait(0.005)
        append(redis_client, keys, "r", 3)

    producer = threading.Thread(target=third_once_the_second_is_read)
    producer.start()
    assert tail.step() == 2  # the second waited for the rest of the window; the third joined it
    producer.join()
    assert batches == [[1], [2, 3]]


def test_without_a_window_every_read_is_handed_on_as_it_is(redis_client, keys):
    batches: list[list[int]] = []
    tail = StreamTail(
        redis_client, keys, lambda b: batches.append([e["seq"] for e in b]), block_ms=50
    )
    tail.step()
    for seq in (1, 2):
        append(redis_client, keys, "r", seq)
        tail.step()
    assert batches == [[1], [2]]


def test_a_backlog_larger_than_one_read_is_handed_on_in_reads_of_count(redis_client, keys):
    batches: list[list[int]] = []
    tail = StreamTail(
        redis_client,
        keys,
        lambda b: batches.append([e["seq"] for e in b]),
        block_ms=50,
        count=3,
        window=0.05,
    )
    tail.step()
    for seq in range(1, 8):
        append(redis_client, keys, "r", seq)
    while tail.step():
        pass
    assert batches == [[1, 2, 3], [4, 5, 6], [7]]
