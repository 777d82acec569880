"""What the message guard (workers/guard.py) costs per message, in the worker's main process.

    PYTHONPATH=. python benchmarks/bench_guard.py [--smoke]

Prints microseconds per check, and the ratio to decoding the same message (which Celery does
anyway), for a typical step message (fewer brackets than the depth limit: two bytes.count
calls), a 1000-dependency fan-in (more brackets: its nesting is measured from the bytes) and a
refused 300-deep message.
"""

from __future__ import annotations

import argparse
import json
import timeit

from workers.guard import check


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--smoke", action="store_true", help="1 %% of the calls: does the script still run?"
    )
    scale = 100 if ap.parse_args().smoke else 1
    link = {
        "task": "canvasflow.step",
        "args": [["t", "builtin", "echo", 5, {"params": {"y": 2}}]],
        "kwargs": {},
        "options": {},
    }
    typical = [
        [
            {"@": ["abcdef0123456789", 1, "wf"], "a": ["COMPLETED", {"rows": 10}]},
            ["s", "builtin", "echo", 1, {"params": {"x": "{{ inputs.a }}"}}],
        ],
        {},
        {"callbacks": None, "errbacks": None, "chain": [link] * 5, "chord": None},
    ]
    wide = [
        [{f"s{i}": ["COMPLETED", None] for i in range(1000)}, ["j", "builtin", "echo", 1]],
        {},
        {},
    ]
    deep = [
        [
            {"@": ["abcdef0123456789", 1, "wf"]},
            ["d", "builtin", "echo", 1, {"params": nested(300)}],
        ],
        {},
        {},
    ]
    for name, body, n in (
        ("typical step", typical, 20000),
        ("1000-dependency fan-in", wide, 500),
        ("300 deep (refused)", deep, 500),
    ):
        raw = json.dumps(body).encode()
        n //= scale
        seconds = timeit.timeit(lambda raw=raw: check(raw, 200, 64 << 20), number=n) / n
        # Celery decodes every message's JSON anyway: the guard's cost next to that decode.
        decode = timeit.timeit(lambda raw=raw: json.loads(raw), number=n) / n
        print(
            f"{name:24s} {len(raw):7d} bytes  {seconds * 1e6:8.1f} us/message  "
            f"{seconds / decode:5.2f}x a json.loads  refused={bool(check(raw, 200, 64 << 20)[0])}"
        )


if __name__ == "__main__":
    main()
