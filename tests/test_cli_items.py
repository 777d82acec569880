"""Mapped steps on the command line and in the Python client (issue 15): ``canvasflow status`` summarises a mapped step's
items, ``canvasflow items RUN STEP`` pages and filters them, and bad options are clear errors.
The items are recorded in a real audit store through the recorder's projection (events of the
engine's shape, tests/items_helpers.py); the run itself is a real run on a real worker."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator import Client, Workflow
from orchestrator.audit import AuditStore
from tests.items_helpers import default_outcome, mapped_run
from tests.test_cli import cli

pytestmark = pytest.mark.integration


@pytest.fixture
def recorded(tmp_path: Path, fleet_settings, worker):
    """A real run with a step ``resize``, and a store whose rows say resize mapped 120 items."""
    settings = replace(fleet_settings, database_url=f"sqlite:///{tmp_path / 'audit.db'}")
    client = Client(settings)
    wf = Workflow("items_cli", mode="sequential")
    for sid in ("list_files", "resize", "publish"):
        wf = wf.step(sid, "builtin", "echo")
    run = client.submit(wf)
    run.wait(30)
    store = AuditStore(settings.database_url)
    store.upgrade()
    evs, lk = mapped_run(run.id, 120)
    store.apply(evs, lk)
    store.dispose()
    yield settings, run.id
    client.close()


def test_status_summarises_a_mapped_step_by_its_item_counts(recorded):
    settings, rid = recorded
    out = cli("status", rid, settings=settings, check=True).stdout
    line = next(x for x in out.splitlines() if "resize" in x and "map" in x)
    assert "map 103/120 COMPLETED, 17 FAILED" in line
    assert f"canvasflow items {rid} resize" in out
    as_json = json.loads(cli("status", rid, "--json", settings=settings, check=True).stdout)
    steps = {s["id"]: s for s in as_json["steps"]}
    assert steps["resize"]["map"] == {"total": 120, "counts": {"COMPLETED": 103, "FAILED": 17}}
    assert steps["publish"]["map"] is None


def test_items_lists_a_page_filtered_by_status(recorded):
    settings, rid = recorded
    out = cli("items", rid, "resize", "--status", "failed", settings=settings, check=True).stdout
    want = [i for i in range(120) if default_outcome(i)[0] == "FAILED"]
    assert f"items 1-{len(want)} of {len(want)} FAILED" in out
    page = json.loads(
        cli("items", rid, "resize", "--offset", "100", "--limit", "10", "--json",
            settings=settings, check=True).stdout
    )  # fmt: skip
    assert [i["index"] for i in page["items"]] == list(range(100, 110))
    assert page["total"] == 120 and page["items"][2]["output"] == {"path": "f102.png", "index": 102}
    first = cli("items", rid, "resize", "--limit", "5", settings=settings, check=True).stdout
    assert "items 1-5 of 120; next page: --offset 5" in first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--status", "DONE"), "Invalid value for '--status'"),
        (("--limit", "0"), "Invalid value for '--limit'"),
        (("--offset", "-3"), "Invalid value for '--offset'"),
    ],
)
def test_bad_items_options_name_the_option(recorded, args, message):
    settings, rid = recorded
    proc = cli("items", rid, "resize", *args, settings=settings)
    assert proc.returncode == 2 and message in proc.stderr


def test_items_of_an_unknown_step_or_without_a_store_are_clear_errors(recorded, tmp_path):
    settings, rid = recorded
    proc = cli("items", rid, "nosuch", settings=settings)
    assert proc.returncode == 1 and f"run {rid} has no step 'nosuch'" in proc.stderr
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    proc = cli("items", rid, "resize", "--database-url", missing, settings=settings)
    assert proc.returncode == 1 and "no audit store at" in proc.stderr


def test_the_python_client_pages_a_mapped_steps_items(recorded):
    settings, rid = recorded
    client = Client(settings)
    try:
        step = client.get_run(rid).step("resize")
        page = step.items(status="FAILED", limit=5)
        want = [i for i in range(120) if default_outcome(i)[0] == "FAILED"]
        assert page.total == len(want) and [i.index for i in page.items] == want[:5]
        rest = step.items(offset=115)
        assert [i.id for i in rest.items] == [f"resize[{i}]" for i in range(115, 120)]
        assert step.counts().counts == {"COMPLETED": 103, "FAILED": 17}
        item = step.item(3)
        assert item.item_of == "resize" and [a.number for a in item.history] == [1, 2, 3]
        with pytest.raises(ValueError, match="limit: must be an integer from 1 to 1000"):
            step.items(limit=0)
        assert client.get_run(rid).step("publish").counts() is None
    finally:
        client.close()
