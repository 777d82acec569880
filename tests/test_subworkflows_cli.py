"""The command line on sub-workflows and outputs: ``explain`` names sub-workflow steps,
``status`` prints the result and lists the children, ``run --follow`` prints the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import Client
from tests.test_cli import cli, write
from tests.test_subworkflows import child_wf, uid

PARENT = """\
id: {pid}
outputs:
  doubled: "{{{{ steps.sub.output.doubled }}}}"
steps:
  - id: prep
    plugin: builtin
    method: echo
    params: {{n: 5}}
  - id: sub
    workflow: {child}
    inputs: {{n: "{{{{ steps.prep.output.n }}}}"}}
    depends_on: [prep]
"""


def test_explain_shows_a_sub_workflow_step(tmp_path: Path) -> None:
    proc = cli(
        "explain", write(tmp_path, "p.yaml", PARENT.format(pid="p", child="kid")), check=True
    )
    assert "sub (sub-workflow: a child run of 'kid', its latest version at submit)" in proc.stdout


@pytest.mark.integration
def test_run_follow_and_status_print_the_result_and_the_children(
    tmp_path: Path, fleet_settings, worker
) -> None:
    client = Client(fleet_settings)
    child = child_wf(client, uid("clichild"))
    path = write(tmp_path, "p.yaml", PARENT.format(pid=uid("cliparent"), child=child))
    proc = cli("run", path, "--follow", settings=fleet_settings, check=True)
    assert 'result: {"doubled": 10}' in proc.stdout
    run_id = next(
        line.split("run ", 1)[1].split(":", 1)[0]
        for line in proc.stdout.splitlines()
        if "COMPLETED" in line and " run " in line
    )
    kids = Client(fleet_settings).get_run(run_id).children()
    status = cli("status", run_id, settings=fleet_settings, check=True)
    assert 'result: {"doubled": 10}' in status.stdout.replace("\n", "")
    assert "1 child run(s):" in status.stdout
    assert f"{kids[0].id}  step sub  {child}  COMPLETED" in status.stdout
    child_status = cli("status", kids[0].id, settings=fleet_settings, check=True)
    assert f"child run of run {run_id} (step sub)" in child_status.stdout
    client.close()
