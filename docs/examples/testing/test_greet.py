# tests/test_greet.py
from pathlib import Path

from acme_plugins.greeter import Greeter

from workers.testing import run_inline

WORKFLOW = Path(__file__).parent / "greet.yaml"


def test_greet_announces_its_first_line():
    snap = run_inline(WORKFLOW, inputs={"name": "Ada"}, plugins=[Greeter])
    assert snap.status == "COMPLETED"
    assert snap.step("greet").output["lines"] == ["hello Ada", "hello Ada"]
    assert snap.step("announce").output == {"first": "hello Ada", "attempt": 1}


def test_an_empty_name_fails_the_run_without_a_retry(canvasflow_inline):
    snap = canvasflow_inline(WORKFLOW, inputs={"name": ""})
    assert snap.status == "FAILED"
    assert snap.step("greet").error == "name must not be empty"
    assert snap.step("greet").attempts == 1
    assert snap.step("announce").status == "CANCELLED"
