"""Specs for what a request may cost the dashboard (issue 13), through the real web server
(``python -m web``, gevent): body size (413), definition limits (400 with paths), and validation
that runs off the gevent loop, so /healthz answers while a big definition is being validated,
and gives up at CANVASFLOW_WEB_CPU_DEADLINE (503).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest
import requests

from tests.web_helpers import ADMIN, OPERATOR, wait_for

if TYPE_CHECKING:
    from tests.web_fixtures import LiveServer

pytest_plugins = ("tests.web_fixtures",)

ECHO = {"plugin": "builtin", "method": "echo"}


def heavy_definition(n: int = 10_000) -> dict[str, Any]:
    """A valid chain of ``n`` steps whose every step has a `when` and templates to check:
    seconds of validation for the server, 2.5 MB of JSON."""
    steps = [{"id": "s0", **ECHO}]
    for i in range(1, n):
        steps.append(
            {
                "id": f"s{i}",
                **ECHO,
                "depends_on": [f"s{i - 1}"],
                "when": f"steps.s{i - 1}.status == 'COMPLETED' and (inputs.n + {i}) * 2 > 0",
                "params": {
                    "v": f"{{{{ steps.s{i - 1}.output.v }}}}",
                    "w": f"item {{{{ inputs.n + {i} }}}} of {{{{ run.id }}}}",
                },
            }
        )
    return {"inputs": {"n": 1}, "steps": steps}


def bearer(server: LiveServer, user: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token(user)}"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send_raw(
    server: LiveServer, method: str, path: str, body: bytes, headers: dict[str, str]
) -> socket.socket:
    """Send a whole request on a socket of its own and return the socket, unanswered."""
    url = urlparse(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=300)
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {url.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body, rest = b"", payload
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            body, rest = body + rest[:n], rest[n + 2 :]
        payload = body
    return status, json.loads(payload)


@pytest.fixture(scope="module")
def admin_headers(live_server: LiveServer) -> dict[str, str]:
    return bearer(live_server, ADMIN)


@pytest.fixture
def slow_server(web_fleet: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    """A live server whose CPU deadline is far shorter than validating heavy_definition takes."""
    from tests.web_fixtures import start_live_server, stop_live_server

    monkeypatch.setenv("CANVASFLOW_WEB_CPU_DEADLINE", "0.5")
    server = start_live_server(web_fleet)
    yield server
    stop_live_server(server)


def test_healthz_answers_while_a_big_definition_is_validated(
    live_server: LiveServer, admin_headers: dict[str, str]
) -> None:
    # Invalid at the end, so the request is all validation: no I/O after it lets the loop serve
    # /healthz in between, as the audit write after a registration would.
    definition = heavy_definition()
    definition["steps"][-1]["depends_on"] = ["nowhere"]
    body = json.dumps({"definition": definition}).encode()
    before = cpu_seconds(live_server.proc.pid)
    sock = send_raw(live_server, "PUT", "/api/v1/workflows/heavy", body, admin_headers)
    # The server is provably at work on it once it has computed for a second more than before.
    wait_for(
        lambda: cpu_seconds(live_server.proc.pid) > before + 1.0, 120, "the server to validate"
    )
    assert requests.get(f"{live_server.url}/healthz", timeout=60).status_code == 200
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):  # ... and the big request has not been answered yet
        sock.recv(1)
    sock.setblocking(True)
    status, payload = read_response(sock)
    assert status == 400, payload
    assert payload["problems"][0] == {
        "path": "steps[9999].depends_on[0]",
        "message": "unknown step 'nowhere'",
    }


def test_sigterm_stops_the_server_while_a_big_definition_is_being_validated(web_fleet: Any) -> None:
    from tests.web_fixtures import start_live_server, stop_live_server

    server = start_live_server(web_fleet)
    try:
        # The signal comes as soon as the validation has begun: what is left of it (~2 s of CPU
        # here) must outlast the server's graceful stop, which waits a second for requests in
        # flight. Sent after a second of validation, ~1.2 s were left: a race on a fast machine.
        definition = heavy_definition()
        definition["steps"][-1]["depends_on"] = ["nowhere"]
        before = cpu_seconds(server.proc.pid)
        sock = send_raw(
            server,
            "PUT",
            "/api/v1/workflows/heavy",
            json.dumps({"definition": definition}).encode(),
            bearer(server, ADMIN),
        )
        wait_for(lambda: cpu_seconds(server.proc.pid) > before + 0.2, 120, "the server to validate")
        server.proc.terminate()
        assert server.proc.wait(120) is not None
        # It stopped without finishing the validation first: the request was never answered.
        try:
            got = sock.recv(65536)
            assert got == b"", got[:300]
        except ConnectionResetError:
            pass
        sock.close()
    finally:
        stop_live_server(server)


def test_validation_past_the_cpu_deadline_is_a_503_that_says_so(slow_server: LiveServer) -> None:
    headers = bearer(slow_server, ADMIN)
    r = requests.put(
        f"{slow_server.url}/api/v1/workflows/heavy",
        json={"definition": heavy_definition()},
        headers=headers,
        timeout=120,
    )
    assert r.status_code == 503
    assert r.json()["message"] == (
        "this request took longer than 0.5 s of computing (CANVASFLOW_WEB_CPU_DEADLINE) "
        "and was abandoned; submit a smaller definition or raise the deadline"
    )
    # The server goes on serving, small definitions included.
    assert requests.get(f"{slow_server.url}/healthz", timeout=30).status_code == 200
    small = {"definition": {"steps": [{"id": "a", **ECHO}]}}
    r = requests.put(
        f"{slow_server.url}/api/v1/workflows/small", json=small, headers=headers, timeout=30
    )
    assert r.status_code == 200, r.text


def test_a_body_over_the_request_limit_is_a_413_naming_the_limit(
    live_server: LiveServer, admin_headers: dict[str, str]
) -> None:
    blob = {"definition": {"steps": [{"id": "a", **ECHO, "params": {"x": "y" * (9 * 2**20)}}]}}
    r = requests.put(
        f"{live_server.url}/api/v1/workflows/huge", json=blob, headers=admin_headers, timeout=60
    )
    assert r.status_code == 413
    assert r.json()["message"] == (
        f"the request body is {len(json.dumps(blob))} bytes: at most 8388608 bytes "
        "(8 MiB) are accepted (CANVASFLOW_WEB_MAX_REQUEST_BYTES)"
    )


def test_a_deep_parameter_is_a_400_with_its_path_and_no_run_starts(live_server: LiveServer) -> None:
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    headers = bearer(live_server, OPERATOR)
    r = requests.post(
        f"{live_server.url}/api/v1/runs",
        headers=headers,
        timeout=60,
        json={"definition": {"id": "deep", "steps": [{"id": "s", **ECHO, "params": {"p": deep}}]}},
    )
    assert r.status_code == 400, r.text
    assert r.json()["problems"] == [
        {
            "path": "steps[0].params.p" + "[0]" * 31,
            "message": "nested deeper than 32 levels (CANVASFLOW_MAX_DEPTH)",
        }
    ]


def test_run_inputs_over_their_limits_are_a_400(live_server: LiveServer) -> None:
    headers = bearer(live_server, OPERATOR)
    r = requests.post(
        f"{live_server.url}/api/v1/runs",
        headers=headers,
        timeout=60,
        json={
            "definition": {"id": "inp", "steps": [{"id": "s", **ECHO}]},
            "inputs": {"blob": "x" * (2**20)},
        },
    )
    assert r.status_code == 400, r.text
    assert r.json()["problems"] == [
        {
            "path": "inputs",
            "message": f"{2**20 + 11} bytes of inputs as JSON: at most "
            "1048576 are allowed (CANVASFLOW_MAX_INPUTS_BYTES)",
        }
    ]


def test_a_yaml_alias_bomb_and_control_characters_are_400s(
    live_server: LiveServer, admin_headers: dict[str, str]
) -> None:
    from tests.test_limits import BOMB

    r = requests.put(
        f"{live_server.url}/api/v1/workflows/wf",
        json={"yaml": BOMB},
        headers=admin_headers,
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert r.json()["problems"] == [
        {
            "path": "line 5, column 36",
            "message": "invalid YAML: aliases expand to more "
            "than 10000 nodes (CANVASFLOW_MAX_YAML_ALIAS_NODES)",
        }
    ]
    r = requests.put(
        f"{live_server.url}/api/v1/workflows/named",
        headers=admin_headers,
        timeout=60,
        json={"definition": {"name": "Pay\u202eroll", "steps": [{"id": "s", **ECHO}]}},
    )
    assert r.status_code == 400, r.text
    assert r.json()["problems"][0]["path"] == "name"
    assert r.json()["problems"][0]["message"].startswith("contains a bidirectional control, U+202E")


def test_json_nested_deeper_than_python_reads_is_a_400(
    live_server: LiveServer, admin_headers: dict[str, str]
) -> None:
    body = b'{"definition": {"steps": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
    r = requests.put(
        f"{live_server.url}/api/v1/workflows/wf",
        data=body,
        timeout=60,
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["message"]


def test_a_computation_past_its_deadline_is_refused_and_its_thread_ends() -> None:
    import threading

    from web.serving import CpuDeadline, within

    ended = threading.Event()

    def spin() -> None:
        try:
            while True:  # pure Python: the async exception lands at the next bytecode boundary
                pass
        finally:
            ended.set()

    with pytest.raises(
        CpuDeadline, match=r"took longer than 0.2 s of computing \(CANVASFLOW_WEB_CPU_DEADLINE\)"
    ):
        within(0.2, spin)
    assert ended.wait(30), "the abandoned computation is still running"
    assert within(5, sum, [1, 2, 3]) == 6
    with pytest.raises(
        ZeroDivisionError
    ):  # the computation's own errors reach the caller as they are
        within(5, lambda: 1 / 0)


def test_the_openapi_document_lists_413_and_503_for_submitting_and_registering(
    web_app: Any,
) -> None:
    spec = web_app.test_client().get("/api/v1/openapi.json").json
    for path, method in (("/api/v1/runs", "post"), ("/api/v1/workflows/{workflow_id}", "put")):
        responses = spec["paths"][path][method]["responses"]
        assert {"413", "503"} <= set(responses), (path, sorted(responses))
