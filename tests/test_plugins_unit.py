"""Specs for the built-in plugin, the demo plugins and the four example workflows (no broker)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.errors import StepError
from orchestrator.model.definition import Definition, load_file
from orchestrator.model.expressions import parse, render_value
from workers.builtin import Builtin
from workers.demo_plugins import DEMO_PLUGINS
from workers.plugins import Registry, describe

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
EXAMPLE_IDS = ["data_processing", "parallel_media", "conditional_analysis", "transactional_update"]


class RecordingCtx:
    """The step context a worker passes to a plugin, recording what the plugin reports."""

    def __init__(
        self,
        attempt: int = 1,
        cancelled: bool = False,
        run_id: str = "run-1",
        step_id: str = "step-1",
        cancel_after_checks: int | None = None,
    ):
        self.run_id, self.step_id, self.attempt = run_id, step_id, attempt
        self._cancelled, self._cancel_after, self.checks = cancelled, cancel_after_checks, 0
        self.logs: list[dict[str, Any]] = []
        self.progresses: list[tuple[float, str | None]] = []
        self.stats_calls: list[dict[str, Any]] = []

    @property
    def cancelled(self) -> bool:
        self.checks += 1
        if self._cancel_after is not None and self.checks > self._cancel_after:
            return True
        return self._cancelled

    def log(
        self,
        message: str,
        level: str = "INFO",
        entity_tag: str | None = None,
        entity_route: str | None = None,
        entity_id: str | None = None,
        entity_type: str | None = None,
    ) -> None:
        self.logs.append(
            {
                "message": message,
                "level": level,
                "entity_tag": entity_tag,
                "entity_route": entity_route,
                "entity_id": entity_id,
            }
        )

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.progresses.append((fraction, message))

    def stats(self, **counters: Any) -> None:
        self.stats_calls.append(counters)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.discover(extra={"builtin": Builtin, **DEMO_PLUGINS})


def call(
    registry: Registry, plugin: str, method: str, ctx: RecordingCtx | None = None, **params: Any
) -> Any:
    return registry.method(plugin, method)(ctx or RecordingCtx(), **params)


def add(a: int, b: int = 0) -> int:
    return a + b


def with_ctx(x: int, ctx: Any) -> dict[str, Any]:
    return {"x": x, "step": ctx.step_id}


# ---------------------------------------------------------------------------------------------
# builtin
# ---------------------------------------------------------------------------------------------


def test_echo_returns_its_params_unchanged():
    params = {"a": 1, "nested": {"b": [1, 2]}, "s": "x"}
    assert Builtin().echo(RecordingCtx(), **params) == params
    assert Builtin().echo(RecordingCtx()) == {}


def test_sleep_returns_slept_and_reports_progress_within_bounds():
    ctx = RecordingCtx()
    assert Builtin().sleep(ctx, seconds=0.25) == {"slept": 0.25}
    fractions = [f for f, _ in ctx.progresses]
    assert 2 <= len(fractions) <= 4  # slices of at most 0.1 s: at most ~10 reports a second
    assert all(0 <= f <= 1 for f in fractions)
    assert fractions == sorted(fractions)
    assert Builtin().sleep(RecordingCtx(), seconds=0) == {"slept": 0}


@pytest.mark.parametrize("bad", ["1", -1, None, True, float("nan")])
def test_sleep_rejects_a_non_number_or_negative(bad):
    with pytest.raises(StepError, match="non-negative number"):
        Builtin().sleep(RecordingCtx(), seconds=bad)


def test_sleep_stops_early_when_the_run_is_cancelled():
    ctx = RecordingCtx(cancel_after_checks=2)
    with pytest.raises(StepError, match="cancelled") as info:
        Builtin().sleep(ctx, seconds=30)
    assert info.value.retryable is False
    assert len(ctx.progresses) == 2


def test_fail_raises_a_step_error_with_the_message():
    with pytest.raises(StepError, match="^boom$"):
        Builtin().fail(RecordingCtx(), message="boom")
    with pytest.raises(StepError, match="^failed$"):
        Builtin().fail(RecordingCtx())


def test_fail_with_times_fails_only_the_first_attempts():
    for attempt in (1, 2):
        with pytest.raises(StepError, match="flaky"):
            Builtin().fail(RecordingCtx(attempt=attempt), message="flaky", times=2)
    assert Builtin().fail(RecordingCtx(attempt=3), message="flaky", times=2) == {"attempt": 3}
    assert Builtin().fail(RecordingCtx(attempt=1), times=0) == {"attempt": 1}
    with pytest.raises(StepError, match="times must be"):
        Builtin().fail(RecordingCtx(), times="2")


def allowing(*modules: str) -> Builtin:
    """The builtin plugin as a worker started with CANVASFLOW_CALL_ALLOW=<modules> builds it."""
    return Builtin(call_allow=modules)


def test_call_imports_and_calls_a_function():
    b, ctx = allowing("json", __name__, "os.path"), RecordingCtx(step_id="s9")
    assert b.call(ctx, function="json:dumps", args=[{"a": 1}]) == '{"a": 1}'
    assert b.call(ctx, function=f"{__name__}:add", args=[2], kwargs={"b": 3}) == 5
    assert b.call(ctx, function="os.path:join", args=["a", "b"]) == "a/b"


def test_call_passes_ctx_to_a_function_that_accepts_it():
    assert allowing(__name__).call(
        RecordingCtx(step_id="s9"), function=f"{__name__}:with_ctx", kwargs={"x": 1}
    ) == {"x": 1, "step": "s9"}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("json", "expected 'module:function'"),
        ("json:", "expected 'module:function'"),
        ("a:b:c", "expected 'module:function'"),
        (42, "expected 'module:function'"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("json:no_such_function", "has no attribute 'no_such_function'"),
        ("json:__doc__", "names starting with '_'"),
        ("json:JSONDecodeError.args", "attribute paths are not followed"),
    ],
)
def test_call_reports_a_bad_function_spec_clearly(spec, message):
    with pytest.raises(StepError, match=message) as info:
        allowing("json", "no_such_module_xyz").call(RecordingCtx(), function=spec)
    assert info.value.retryable is False


def test_call_turns_errors_and_non_json_results_into_step_errors():
    b = allowing("json", "builtins")
    with pytest.raises(StepError, match="json:loads raised JSONDecodeError"):
        b.call(RecordingCtx(), function="json:loads", args=["{bad"])
    with pytest.raises(StepError, match="not JSON"):
        b.call(RecordingCtx(), function="builtins:set", args=[[1]])
    with pytest.raises(StepError, match="args must be a list"):
        b.call(RecordingCtx(), function="json:dumps", args="x")


# ---------------------------------------------------------------------------------------------
# The registry accepts every plugin
# ---------------------------------------------------------------------------------------------


def test_registry_accepts_every_demo_plugin_and_lists_required_params(registry):
    assert set(DEMO_PLUGINS) | {"builtin"} <= set(registry.names())
    catalog = registry.catalog()
    assert catalog["builtin"]["sleep"]["required"] == ["seconds"]
    assert catalog["builtin"]["echo"]["accepts_any"] is True
    assert catalog["builtin"]["call"]["required"] == ["function"]
    assert catalog["csv_loader"]["load_file"]["required"] == ["file_path"]
    assert catalog["data_cleaner"]["clean_dataset"]["required"] == ["path", "output_path"]
    assert catalog["verifier"]["verify"]["required"] == ["release"]
    assert catalog["report_generator"]["generate"]["accepts_any"] is True
    for name, cls in DEMO_PLUGINS.items():
        methods = describe(cls)
        assert methods, name
        assert all(info.doc for info in methods.values()), name


# ---------------------------------------------------------------------------------------------
# The CSV plugins on real files
# ---------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_pipeline_end_to_end_on_real_files(registry, tmp_path):
    src, ctx = tmp_path / "in" / "data.csv", RecordingCtx()
    gen = call(registry, "csv_loader", "generate", file_path=str(src), rows=200, seed=1)
    assert gen["rows"] == 200 and src.exists()

    loaded = call(registry, "csv_loader", "load_file", ctx, file_path=str(src))
    assert loaded["rows"] == 200 and loaded["columns"] == ["id", "category", "value1", "value2"]
    assert (
        loaded["batch_id"]
        == call(registry, "csv_loader", "load_file", file_path=str(src))["batch_id"]
    )
    assert ctx.logs[0]["entity_tag"] == "row_batch" and ctx.stats_calls

    checked = call(
        registry,
        "data_validator",
        "validate_schema",
        path=loaded["path"],
        required_columns=["id", "category", "value1", "value2"],
    )
    assert checked["invalid_rows"] == 0 and checked["rows_with_missing_values"] > 0
    assert checked["valid_rows"] == 200 - checked["rows_with_missing_values"]

    cleaned = call(
        registry,
        "data_cleaner",
        "clean_dataset",
        path=loaded["path"],
        output_path=str(tmp_path / "work" / "clean.csv"),
        handle_missing="interpolate",
    )
    rows = read_rows(tmp_path / "work" / "clean.csv")
    assert cleaned["duplicates_removed"] > 0 and cleaned["missing_values"] > 0
    assert len(rows) == cleaned["rows_out"] == 200 - cleaned["duplicates_removed"]
    assert all(v != "" for r in rows for v in r.values())

    transformed = call(
        registry,
        "data_transformer",
        "apply_transformations",
        path=cleaned["path"],
        output_path=str(tmp_path / "work" / "t.csv"),
        transformations=[
            {"type": "normalize", "columns": ["value1", "value2"]},
            {"type": "encode", "column": "category"},
        ],
    )
    rows = read_rows(tmp_path / "work" / "t.csv")
    assert transformed["applied"] == ["normalize:value1", "normalize:value2", "encode:category"]
    assert all(0 <= float(r["value1"]) <= 1 for r in rows)
    assert {float(r["value2"]) for r in rows} >= {0.0, 1.0}
    assert {r["category"] for r in rows} == {"0", "1", "2", "3"}
    assert transformed["encodings"]["category"] == {"alpha": 0, "beta": 1, "delta": 2, "gamma": 3}

    final = tmp_path / "out" / "final.csv"
    saved = call(
        registry, "csv_writer", "save_file", path=transformed["path"], output_path=str(final)
    )
    assert final.read_bytes() == (tmp_path / "work" / "t.csv").read_bytes()
    assert saved == {
        "path": str(final),
        "rows": len(rows),
        "bytes": final.stat().st_size,
        "metadata": str(final) + ".meta.json",
    }
    meta = json.loads(Path(saved["metadata"]).read_text())
    assert meta["rows"] == len(rows) and meta["run_id"] == "run-1"
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temp files


def test_cleaning_modes_drop_and_zero(registry, tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("id,category,value1\n1,a,1\n1,a,1\n2,,\n3,b,3\n")
    dropped = call(
        registry,
        "data_cleaner",
        "clean_dataset",
        path=str(src),
        output_path=str(tmp_path / "drop.csv"),
        handle_missing="drop",
    )
    assert (dropped["rows_in"], dropped["rows_out"], dropped["duplicates_removed"]) == (4, 2, 1)
    call(
        registry,
        "data_cleaner",
        "clean_dataset",
        path=str(src),
        output_path=str(tmp_path / "z.csv"),
        handle_missing="zero",
    )
    assert read_rows(tmp_path / "z.csv")[1] == {"id": "2", "category": "unknown", "value1": "0"}
    call(
        registry,
        "data_cleaner",
        "clean_dataset",
        path=str(src),
        output_path=str(tmp_path / "i.csv"),
        handle_missing="interpolate",
    )
    assert read_rows(tmp_path / "i.csv")[1]["value1"] == "2"
    with pytest.raises(StepError, match="handle_missing must be"):
        call(
            registry,
            "data_cleaner",
            "clean_dataset",
            path=str(src),
            output_path=str(tmp_path / "x.csv"),
            handle_missing="guess",
        )


def test_csv_plugins_fail_clearly(registry, tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(StepError, match=f"input file not found: {missing}"):
        call(registry, "csv_loader", "load_file", file_path=missing)
    src = tmp_path / "d.csv"
    src.write_text("id,value\n1,2\n3\n")
    with pytest.raises(StepError, match=r"missing columns \['category'\].*1 rows with the wrong"):
        call(
            registry,
            "data_validator",
            "validate_schema",
            path=str(src),
            required_columns=["id", "category"],
        )
    lax = call(
        registry,
        "data_validator",
        "validate_schema",
        path=str(src),
        required_columns=["category"],
        strict_mode=False,
    )
    assert lax["missing_columns"] == ["category"] and lax["invalid_rows"] == 1
    with pytest.raises(StepError, match="unknown type 'pivot'"):
        call(
            registry,
            "data_transformer",
            "apply_transformations",
            path=str(src),
            output_path=str(tmp_path / "o.csv"),
            transformations=[{"type": "pivot"}],
        )
    with pytest.raises(StepError, match="has no column 'nope'"):
        call(
            registry,
            "data_transformer",
            "apply_transformations",
            path=str(src),
            output_path=str(tmp_path / "o.csv"),
            transformations=[{"type": "encode", "column": "nope"}],
        )
    assert call(registry, "data_validator", "discard", batch="batch-1") == {"discarded": "batch-1"}


# ---------------------------------------------------------------------------------------------
# Media, analysis and deployment plugins
# ---------------------------------------------------------------------------------------------


def test_media_batches_report_progress_and_a_log_per_item(registry):
    ctx = RecordingCtx()
    out = call(
        registry,
        "image_processor",
        "batch_process",
        ctx,
        input_directory="in",
        output_directory="out",
        count=4,
        seconds=0.02,
    )
    assert out["processed"] == 4 and out["outputs"][0] == "out/image_001.jpg"
    assert [f for f, _ in ctx.progresses] == [0.25, 0.5, 0.75, 1.0]
    assert [log["entity_tag"] for log in ctx.logs] == ["image"] * 4
    assert ctx.stats_calls == [{"items_processed": 4, "items_failed": 0}]
    with pytest.raises(StepError, match="cancelled"):
        call(
            registry,
            "video_processor",
            "batch_process",
            RecordingCtx(cancelled=True),
            input_directory="in",
            output_directory="out",
        )
    manifest = call(
        registry, "manifest", "build", images=out, videos=["v.mp4"], audio={"outputs": []}
    )
    assert manifest["counts"] == {"images": 4, "videos": 1, "audio": 0} and manifest["total"] == 5
    assert call(registry, "archiver", "archive", manifest=manifest) == {
        "archive": "media_package.zip",
        "items": 5,
    }


def test_inspector_threshold_and_processors(registry):
    assert call(registry, "data_inspector", "inspect", rows=999) == {"rows": 999, "size": "small"}
    assert call(registry, "data_inspector", "inspect", rows=1000) == {"rows": 1000, "size": "large"}
    with pytest.raises(StepError, match="rows must be"):
        call(registry, "data_inspector", "inspect", rows="many")
    small = call(registry, "small_processor", "process", rows=100)
    large = call(registry, "large_processor", "process", rows=100, chunks=3)
    assert small["mean"] == large["mean"] and sum(p["rows"] for p in large["partials"]) == 100
    assert call(registry, "visualizer", "render", kind="bar", source=small)["rows"] == 100
    assert call(registry, "report_generator", "generate", a=1, b=None)["sections"] == ["a"]


def test_verifier_fails_as_designed_and_ids_are_stable_across_reruns(registry):
    with pytest.raises(
        StepError, match="^verification failed: health check returned 503 for app-2$"
    ):
        call(registry, "verifier", "verify", release="app-2", expect_healthy=False)
    assert call(registry, "verifier", "verify", release="app-2")["healthy"] is True
    first = call(registry, "backup", "create", target="db")
    assert first == call(registry, "backup", "create", target="db")  # at-least-once safe
    assert call(registry, "backup", "restore", backup_id=first["backup_id"]) == {
        "restored": first["backup_id"]
    }


# ---------------------------------------------------------------------------------------------
# The example workflows
# ---------------------------------------------------------------------------------------------


def example(workflow_id: str) -> Path:
    return EXAMPLES / f"{workflow_id}.yaml"


@pytest.mark.parametrize("workflow_id", EXAMPLE_IDS)
def test_example_parses_and_every_call_matches_a_plugin(workflow_id, registry):
    data = yaml.safe_load(example(workflow_id).read_text())
    assert data["id"] == workflow_id and data["version"] == "1.0.0"
    assert data["name"] and data["description"] and data["mode"] and data["inputs"]
    catalog = registry.catalog()
    for step in data["steps"]:
        calls = [step] + ([step["compensate"]] if step.get("compensate") else [])
        for c in calls:
            info = catalog[c["plugin"]][c.get("method", "run")]
            params = c.get("params", {})
            for name in info["required"]:
                assert name in params, (step["id"], name)
            assert info["accepts_any"] or set(params) <= set(info["params"]), step["id"]
        assert step.get("timeout", data["defaults"]["timeout"]) <= 30
        assert step.get("queue", "default") == "default"
    load_file(example(workflow_id), catalog=catalog)  # the full schema and semantic checks


def run_example(defn: Definition, registry: Registry, **inputs: Any) -> tuple[str, dict, list]:
    """A reference executor of the run semantics in DESIGN.md, one step at a time."""
    scope: dict[str, Any] = {
        "inputs": {**defn.inputs, **inputs},
        "steps": {},
        "run": {"id": "run-42", "workflow": defn.id, "version": defn.version},
    }
    steps, completed, compensations, status = scope["steps"], [], [], "COMPLETED"
    for step in defn.steps:
        assert all(d in steps for d in step.depends_on), "examples list steps in a runnable order"
        deps = [steps[d]["status"] for d in step.depends_on]
        if status != "COMPLETED":
            steps[step.id] = {"status": "CANCELLED", "output": None}
            continue
        skip = deps and ("COMPLETED" not in deps if step.join == "any" else "SKIPPED" in deps)
        if skip or (step.when and not parse(step.when).evaluate(scope)):
            steps[step.id] = {"status": "SKIPPED", "output": None}
            continue
        ctx = RecordingCtx(run_id="run-42", step_id=step.id)
        try:
            output = registry.method(step.plugin, step.method)(
                ctx, **render_value(dict(step.params), scope)
            )
        except StepError as exc:
            steps[step.id] = {"status": "FAILED", "output": None, "error": str(exc)}
            status = "FAILED" if step.critical else status
            continue
        json.dumps(output)
        steps[step.id] = {"status": "COMPLETED", "output": output}
        completed.append(step)
    if status == "FAILED":
        for step in reversed(completed):
            if step.compensate:
                c = step.compensate
                params = render_value(dict(c.params), scope)
                result = registry.method(c.plugin, c.method)(
                    RecordingCtx(run_id="run-42"), **params
                )
                compensations.append((step.id, c.plugin, c.method, result))
                steps[step.id]["status"] = "COMPENSATED"
    return status, steps, compensations


def statuses(steps: dict) -> dict[str, str]:
    return {sid: s["status"] for sid, s in steps.items()}


def test_data_processing_example_runs_on_real_files(registry, tmp_path):
    defn = load_file(example("data_processing"))
    assert defn.mode == "sequential" and defn.sla_seconds and defn.step("validate_data").compensate
    assert any(s.retries for s in defn.steps)
    src = tmp_path / "input" / "data.csv"
    call(registry, "csv_loader", "generate", file_path=str(src))
    out = tmp_path / "output" / "processed.csv"
    status, steps, _ = run_example(
        defn, registry, input_path=str(src), work_dir=str(tmp_path / "work"), output_path=str(out)
    )
    assert status == "COMPLETED" and set(statuses(steps).values()) == {"COMPLETED"}
    assert steps["clean_data"]["output"]["path"] == str(
        tmp_path / "work" / "run-42" / "cleaned.csv"
    )
    assert steps["save_results"]["output"]["rows"] == len(read_rows(out)) > 150
    assert Path(str(out) + ".meta.json").exists()


def test_data_processing_example_fails_naming_a_missing_input(registry, tmp_path):
    missing = str(tmp_path / "none.csv")
    status, steps, compensations = run_example(
        load_file(example("data_processing")), registry, input_path=missing
    )
    assert status == "FAILED" and missing in steps["load_data"]["error"]
    assert statuses(steps)["save_results"] == "CANCELLED" and compensations == []


def test_parallel_media_example_fans_in_to_manifest_and_archive(registry):
    defn = load_file(example("parallel_media"))
    assert defn.mode == "parallel"
    assert [s.id for s in defn.steps if not s.depends_on] == [
        "process_images",
        "process_videos",
        "process_audio",
    ]
    assert set(defn.step("build_manifest").depends_on) == {
        "process_images",
        "process_videos",
        "process_audio",
    }
    status, steps, _ = run_example(defn, registry)
    assert status == "COMPLETED"
    assert steps["build_manifest"]["output"]["counts"] == {"images": 5, "videos": 3, "audio": 4}
    assert steps["archive"]["output"] == {"archive": "media_package.zip", "items": 12}


@pytest.mark.parametrize(
    "rows, taken, skipped",
    [
        (None, "small", "large"),  # the default input, 250 rows
        (5000, "large", "small"),
    ],
)
def test_conditional_analysis_example_takes_one_branch(registry, rows, taken, skipped):
    defn = load_file(example("conditional_analysis"))
    assert defn.mode == "conditional" and defn.step("report").join == "any"
    status, steps, _ = run_example(defn, registry, **({"rows": rows} if rows else {}))
    assert status == "COMPLETED"
    assert statuses(steps) == {
        "inspect": "COMPLETED",
        f"process_{taken}": "COMPLETED",
        f"process_{skipped}": "SKIPPED",
        f"viz_{taken}": "COMPLETED",
        f"viz_{skipped}": "SKIPPED",
        "report": "COMPLETED",
    }
    assert f"{taken}_chart" in steps["report"]["output"]["sections"]
    assert f"{skipped}_chart" not in steps["report"]["output"]["sections"]


def test_transactional_update_example_fails_and_compensates_newest_first(registry):
    defn = load_file(example("transactional_update"))
    status, steps, compensations = run_example(defn, registry)
    assert status == "FAILED"
    assert (
        steps["verify"]["error"] == "verification failed: health check returned 503 for app-2.1.0"
    )
    assert statuses(steps) == {
        "begin": "COMPLETED",
        "backup": "COMPENSATED",
        "migrate": "COMPENSATED",
        "deploy": "COMPENSATED",
        "verify": "FAILED",
        "commit": "CANCELLED",
    }
    backup_id = steps["backup"]["output"]["backup_id"]
    assert compensations == [
        ("deploy", "deployment", "rollback", {"rolled_back": "app-2.1.0"}),
        ("migrate", "migration", "revert", {"reverted": "42"}),
        ("backup", "backup", "restore", {"restored": backup_id}),
    ]
    healthy, steps, compensations = run_example(defn, registry, healthy=True)
    assert healthy == "COMPLETED" and compensations == [] and steps["commit"]["output"]["committed"]


def test_buffered_log_lines_leave_as_one_event_with_bad_values_clamped():
    import json

    from orchestrator.logbatch import MAX_MESSAGE, log_lines
    from workers.context import StepContext

    ctx = StepContext("r", "s", 1)
    ctx.log("plain")
    ctx.log({"not": "text"}, level="loud", entity_id=7)
    ctx.log("x" * 1_000_000, level="error", entity_tag="t")
    ctx.log("listy", level=["WARNING"], entity_route=["a", "b"])
    ctx.progress(3)
    (log_event, progress) = ctx.drain()
    assert log_event[:3] == ["log", "s", ""] and progress[0] == "progress"
    data = json.loads(log_event[4])
    assert data["n"] == 4 and "entity_type" not in data  # a column nobody used is left out
    lines = log_lines(data)
    assert [x["level"] for x in lines] == ["INFO", "INFO", "ERROR", "INFO"]
    assert lines[1]["message"] == "{'not': 'text'}" and lines[1]["entity_id"] == "7"
    assert len(lines[2]["message"]) < MAX_MESSAGE + 100
    assert lines[2]["message"].endswith("[truncated from 1000000 characters]")
    assert lines[3]["entity_route"] == "['a', 'b']" and lines[0]["entity_route"] is None
    assert float(log_event[3]) == pytest.approx(lines[0]["ts"])
    assert ctx.drain() == []  # drained once
    # The one-line shape of events written before batches still reads.
    assert log_lines({"message": "old", "level": "INFO"}) == [
        {"ts": None, "message": "old", "level": "INFO"}
    ]
