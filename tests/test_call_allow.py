"""Who may run what: builtin.call runs only functions of modules in the fleet's allow-list.

The drill (issue 13, item 1): an operator submitted {"plugin": "builtin", "method": "call",
"params": {"function": "os:system", "args": ["id > proof.txt"]}} and every worker ran it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator import Client, DefinitionError, Workflow
from orchestrator.errors import ConfigurationError, StepError
from orchestrator.keys import Keys
from orchestrator.model.callallow import allows, check_steps, fleet_allow, parse_allow
from orchestrator.settings import Settings
from tests.conftest import make_settings
from tests.web_helpers import ADMIN, Api
from workers.builtin import Builtin

pytest_plugins = ("tests.web_fixtures",)


class Ctx:
    run_id, step_id, attempt = "run-1", "s", 1


def call(allow: tuple[str, ...], function: str, *args: Any) -> Any:
    """builtin.call as a worker started with CANVASFLOW_CALL_ALLOW=<allow> runs it."""
    return Builtin(call_allow=allow).call(Ctx(), function=function, args=list(args))


# ---------------------------------------------------------------------------------------------
# The matching rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, module, allowed",
    [
        ("os", "os", True),
        ("os", "os2", False),
        ("os", "os.path", False),  # an exact entry is that module only
        ("mypackage.jobs", "mypackage.jobs", True),
        ("mypackage.jobs", "mypackage", False),
        ("mypackage.jobs", "mypackage.jobs.sub", False),
        ("mypackage.jobs", "mypackage.jobsx", False),
        ("mypackage.*", "mypackage", True),  # a prefix entry: the package and everything below
        ("mypackage.*", "mypackage.jobs", True),
        ("mypackage.*", "mypackage.jobs.deep", True),
        ("mypackage.*", "mypackage2", False),
        ("mypackage.*", "mypackage2.jobs", False),
        ("mypackage.jobs.*", "mypackage.jobs_old", False),
        ("mypackage.jobs.*", "mypackage", False),
    ],
)
def test_an_entry_allows_its_module_and_a_prefix_entry_the_modules_below_it(entry, module, allowed):
    assert allows(parse_allow(entry), module) is allowed


def test_nothing_is_allowed_by_an_empty_allow_list():
    assert parse_allow("") == parse_allow(" , ,") == ()
    assert not allows((), "json")


@pytest.mark.parametrize(
    "raw", ["*", "my-package", "a..b", ".relative", "a.*.b", "pkg.", "os system", "a.b*"]
)
def test_an_allow_list_entry_that_is_not_a_module_or_prefix_is_refused_naming_the_setting(raw):
    with pytest.raises(ConfigurationError, match="CANVASFLOW_CALL_ALLOW") as info:
        Settings.from_env({"CANVASFLOW_CALL_ALLOW": f"json, {raw}"})
    assert repr(raw.strip()) in str(info.value)


def test_the_allow_list_is_read_from_the_environment_and_handed_to_child_processes():
    settings = Settings.from_env(
        {"CANVASFLOW_CALL_ALLOW": " mypackage.jobs, tools.* ,mypackage.jobs"}
    )
    assert settings.call_allow == ("mypackage.jobs", "tools.*")
    assert settings.as_env()["CANVASFLOW_CALL_ALLOW"] == "mypackage.jobs,tools.*"
    assert Settings.from_env(settings.as_env()).call_allow == settings.call_allow
    assert Settings().call_allow == () and Settings().as_env()["CANVASFLOW_CALL_ALLOW"] == ""


# ---------------------------------------------------------------------------------------------
# On the worker (the plugin itself)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "function, args",
    [
        ("os:system", ["id > proof.txt"]),
        ("os:getenv", ["CANVASFLOW_DATABASE_URL"]),
        ("builtins:eval", ["6 * 7"]),
        ("json:dumps", [1]),
    ],
)
def test_call_is_refused_entirely_when_the_allow_list_is_empty(
    function, args, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StepError) as info:
        call((), function, *args)
    message = str(info.value)
    assert info.value.retryable is False
    assert f"may not run '{function}'" in message
    assert "CANVASFLOW_CALL_ALLOW is empty" in message
    assert f"add '{function.split(':')[0]}' to CANVASFLOW_CALL_ALLOW" in message
    assert not (tmp_path / "proof.txt").exists()


def test_a_module_that_is_not_allowed_is_never_imported():
    sys.modules.pop("tests.call_targets", None)
    with pytest.raises(
        StepError, match="module 'tests.call_targets' is not in this worker's call allow-list"
    ):
        call(
            ("tests.helpers", "tests.call_targets.sub", "tests.call_target"),
            "tests.call_targets:double",
            2,
        )
    assert "tests.call_targets" not in sys.modules  # importing runs code: it was never imported
    assert call(("tests.call_targets",), "tests.call_targets:double", 2) == 4
    assert "tests.call_targets" in sys.modules


def test_an_allowed_module_runs_by_exact_name_and_by_prefix():
    assert call(("tests.call_targets",), "tests.call_targets:double", 21) == 42
    assert call(("tests.*",), "tests.call_targets:double", 1) == 2
    assert call(("json",), "json:dumps", [1]) == "[1]"


@pytest.mark.parametrize(
    "function, message",
    [
        ("tests.call_targets:os", "is not callable (it is a module)"),
        ("tests.call_targets:system", "comes from module 'posix'"),
        ("tests.call_targets:getenv", "comes from module 'os'"),
        ("tests.call_targets:eval", "comes from module 'builtins'"),
        ("tests.call_targets:Popen", "comes from module 'subprocess'"),
        ("tests.call_targets:__builtins__", "names starting with '_'"),
        ("tests.call_targets:__import__", "names starting with '_'"),
        ("tests.call_targets:__loader__", "names starting with '_'"),
        ("tests.call_targets:_private", "names starting with '_'"),
        ("tests.call_targets:os.system", "attribute paths are not followed"),
        ("tests.call_targets:double.__globals__", "attribute paths are not followed"),
        ("tests.call_targets:getattr", "has no attribute 'getattr'"),  # builtins are not looked up
        ("tests.call_targets:IMPORTED", "is not callable"),
        ("tests.call_targets.:double", "is not a module name"),
        (".call_targets:double", "is not a module name"),
        ("{{ inputs.fn }}", "is a template"),
        ("tests.call_targets:{{ inputs.fn }}", "is a template"),
    ],
)
def test_names_that_escape_an_allowed_module_are_refused(function, message):
    with pytest.raises(StepError) as info:
        call(("tests.call_targets",), function, "id")
    assert message in str(info.value)
    assert info.value.retryable is False


def test_a_re_export_runs_when_its_own_module_is_allowed_too():
    assert (
        call(("tests.call_targets", "os"), "tests.call_targets:getenv", "NO_SUCH_VARIABLE_XYZ")
        is None
    )
    # os.path is posixpath: a function of the very module that was imported is its own
    assert call(("os.path",), "os.path:basename", "/a/b") == "b"


# ---------------------------------------------------------------------------------------------
# At validation, against the catalog the workers publish
# ---------------------------------------------------------------------------------------------

CALL_INFO = {
    "params": ["function", "args", "kwargs"],
    "required": ["function"],
    "accepts_any": False,
    "doc": "",
}


def catalog(*workers: tuple[list[str], list[str]]) -> dict[str, Any]:
    """The merged catalog a client builds from workers given as (queues, call_allow)."""
    entries = [{"queues": queues, "call_allow": allow} for queues, allow in workers]
    return {"builtin": {"call": {**CALL_INFO, "allow": fleet_allow(entries)}, "echo": {}}}


def calling(function: Any, **fields: Any) -> dict[str, Any]:
    return {"plugin": "builtin", "method": "call", "params": {"function": function}, **fields}


def problems(
    steps: list[dict[str, Any]], cat: dict[str, Any] | None, **data: Any
) -> dict[str, str]:
    return dict(check_steps({"id": "w", "steps": steps, **data}, cat))


def test_validation_refuses_a_function_no_worker_of_its_queue_allows_with_its_path():
    cat = catalog((["default", "io"], ["tests.helpers"]))
    found = problems(
        [
            calling("tests.helpers:add"),
            calling("os:system"),
            calling("builtins:eval"),
            {"plugin": "builtin", "method": "echo", "compensate": calling("os:getenv")},
        ],
        cat,
    )
    assert list(found) == [
        "steps[1].params.function",
        "steps[2].params.function",
        "steps[3].compensate.params.function",
    ]
    assert found["steps[1].params.function"].startswith(
        "builtin.call may not run 'os:system': module 'os' is not in the call allow-list of the "
        "workers on queue 'default' (CANVASFLOW_CALL_ALLOW=tests.helpers)"
    )


def test_validation_requires_every_worker_of_the_steps_queue_to_allow_the_function():
    cat = catalog((["jobs"], ["mypackage.jobs"]), (["jobs"], ["mypackage.*"]), (["default"], []))
    assert problems([calling("mypackage.jobs:load", queue="jobs")], cat) == {}
    assert problems([calling("mypackage.jobs:load")], cat, defaults={"queue": "jobs"}) == {}
    # one worker on "jobs" allows only mypackage.jobs: the step could land on it
    assert list(problems([calling("mypackage.other:x", queue="jobs")], cat)) == [
        "steps[0].params.function"
    ]
    # the default queue's worker allows nothing
    assert (
        "CANVASFLOW_CALL_ALLOW is empty"
        in problems([calling("mypackage.jobs:load")], cat)["steps[0].params.function"]
    )
    # a compensation runs on its step's queue unless it names its own
    assert (
        problems(
            [
                calling(
                    "mypackage.jobs:load", queue="jobs", compensate=calling("mypackage.jobs:undo")
                )
            ],
            cat,
        )
        == {}
    )
    assert list(
        problems(
            [
                calling(
                    "mypackage.jobs:load",
                    queue="jobs",
                    compensate=calling("mypackage.jobs:undo", queue="default"),
                )
            ],
            cat,
        )
    ) == ["steps[0].compensate.params.function"]


def test_a_queue_no_worker_consumes_yet_is_checked_against_every_online_worker():
    cat = catalog((["default"], ["tests.*"]), (["io"], ["tests.helpers"]))
    assert problems([calling("tests.helpers:add", queue="later")], cat) == {}
    found = problems([calling("tests.audit_steps:chatty", queue="later")], cat)
    assert "the online workers (none consumes queue 'later')" in found["steps[0].params.function"]


def test_a_template_or_malformed_function_is_refused_even_without_a_catalog():
    found = problems(
        [
            calling("{{ inputs.fn }}"),
            calling("os:system.x"),
            calling(42),
            calling("tests.helpers:__import__"),
        ],
        None,
    )
    assert "is a template" in found["steps[0].params.function"]
    assert "attribute paths are not followed" in found["steps[1].params.function"]
    assert "expected 'module:function'" in found["steps[2].params.function"]
    assert "names starting with '_'" in found["steps[3].params.function"]
    assert problems([calling("os:system")], None) == {}  # no worker online: the worker decides


def test_a_workflow_built_in_python_gets_the_same_path_message():
    wf = (
        Workflow("w")
        .step("a", "builtin", "echo")
        .step("b", "builtin", "call", params={"function": "os:system"})
    )
    with pytest.raises(DefinitionError) as info:
        wf.build(catalog=catalog((["default"], [])))
    assert [p for p, _ in info.value.problems] == ["steps[1].params.function"]


# ---------------------------------------------------------------------------------------------
# The drill, on real workers
# ---------------------------------------------------------------------------------------------


def drill_step(sid: str, function: str, *args: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "plugin": "builtin",
        "method": "call",
        "params": {"function": function, "args": list(args)},
    }


def drill_steps(proof: Path) -> list[dict[str, Any]]:
    """The drill's definitions: a shell command, a secret from the environment, eval."""
    return [
        drill_step("system", "os:system", f"id > {proof}"),
        drill_step("getenv", "os:getenv", "CANVASFLOW_REDIS_URL"),
        drill_step("evil", "builtins:eval", "6 * 7"),
        {
            "id": "undo",
            "plugin": "builtin",
            "method": "echo",
            "compensate": {
                k: v for k, v in drill_step("", "os:system", f"id > {proof}").items() if k != "id"
            },
        },
    ]


@pytest.mark.integration
def test_the_drill_is_refused_at_submit_with_a_path_message_for_every_step(
    client: Client, tmp_path: Path
):
    proof = tmp_path / "proof.txt"
    with pytest.raises(DefinitionError) as info:
        client.submit({"id": "drill", "steps": drill_steps(proof)})
    found = dict(info.value.problems)
    assert list(found) == [
        "steps[0].params.function",
        "steps[1].params.function",
        "steps[2].params.function",
        "steps[3].compensate.params.function",
    ]
    assert (
        "module 'os' is not in the call allow-list of the workers on queue 'default' "
        "(CANVASFLOW_CALL_ALLOW=tests.helpers,tests.web_helpers,tests.audit_steps)"
        in found["steps[0].params.function"]
    )
    assert "steps[2].params.function: builtin.call may not run 'builtins:eval'" in str(info.value)
    assert not proof.exists()


@pytest.mark.integration
def test_a_call_past_validation_is_refused_on_the_worker_without_running(
    redis_url, start_worker, tmp_path
):
    # Own Redis database (own broker queues) so that only this test's worker takes the steps.
    url = redis_url.rsplit("/", 1)[0] + "/8"
    redis.Redis.from_url(url).flushdb()
    settings = make_settings(url, lease_ttl=3, visibility_timeout=60)
    worker = start_worker(
        settings.with_(call_allow="tests.helpers,tests.call_targets"), concurrency=1
    )
    keys = Keys(settings.key_prefix)
    client = Client(settings)
    try:
        entry = json.loads(client.redis.hget(keys.catalog, worker.hostname))
        assert entry["call_allow"] == ["tests.helpers", "tests.call_targets"]  # what it publishes
        # A stale catalog: it claims the worker allows os and builtins, so validation lets the
        # drill through and only the worker's own check stands between it and a shell.
        entry["call_allow"] += ["os", "builtins"]
        client.redis.hset(keys.catalog, worker.hostname, json.dumps(entry))
        proof = tmp_path / "proof.txt"
        steps = [{**s, "critical": False, "retries": 2} for s in drill_steps(proof)[:3]]
        # Names an allowed module imported from elsewhere: they pass validation (the module is
        # allowed) and must be refused by the worker.
        attacks = {"re_system": "system", "re_eval": "eval", "module_object": "os"}
        steps += [
            {
                "id": sid,
                "plugin": "builtin",
                "method": "call",
                "critical": False,
                "params": {"function": f"tests.call_targets:{name}", "args": [f"id > {proof}"]},
            }
            for sid, name in attacks.items()
        ]
        steps.append(
            {
                "id": "allowed",
                "plugin": "builtin",
                "method": "call",
                "params": {"function": "tests.helpers:add", "args": [2, 3]},
            }
        )
        snap = client.submit({"id": "drill_worker", "steps": steps}).wait(60)
    finally:
        client.close()
    assert not proof.exists()
    assert snap.status == "COMPLETED", snap  # the refused steps are non-critical
    assert snap.step("allowed").status == "COMPLETED" and snap.step("allowed").output == 5
    for sid, function in (
        ("system", "os:system"),
        ("getenv", "os:getenv"),
        ("evil", "builtins:eval"),
    ):
        step = snap.step(sid)
        assert step.status == "FAILED" and step.output is None, step
        assert step.attempts == 1, step  # refused for good: retries would not change the answer
        assert (
            f"builtin.call may not run '{function}': module '{function.split(':')[0]}' is not in this "
            "worker's call allow-list (CANVASFLOW_CALL_ALLOW=tests.helpers,tests.call_targets)"
            in step.error
        )
    assert "comes from module 'posix'" in snap.step("re_system").error
    assert "comes from module 'builtins'" in snap.step("re_eval").error
    assert "is not callable (it is a module)" in snap.step("module_object").error
    assert {snap.step(s).status for s in ("re_system", "re_eval", "module_object")} == {"FAILED"}


@pytest.mark.integration
def test_the_drill_posted_to_the_api_is_a_400_naming_each_path_and_nothing_runs(
    web_app, tmp_path: Path
):
    admin, proof = Api(web_app, ADMIN), tmp_path / "proof.txt"
    r = admin.post("/runs", {"definition": {"id": "drill_api", "steps": drill_steps(proof)}})
    assert r.status_code == 400, r.json
    problems = {p["path"]: p["message"] for p in r.json["problems"]}
    assert set(problems) == {
        "steps[0].params.function",
        "steps[1].params.function",
        "steps[2].params.function",
        "steps[3].compensate.params.function",
    }
    assert problems["steps[1].params.function"].startswith("builtin.call may not run 'os:getenv'")
    r = admin.put(
        "/workflows/drill_api", {"definition": {"id": "drill_api", "steps": drill_steps(proof)[:1]}}
    )
    assert r.status_code == 400 and [p["path"] for p in r.json["problems"]] == [
        "steps[0].params.function"
    ]
    assert not proof.exists()
