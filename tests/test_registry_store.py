"""The workflow registry is kept in the audit store too (orchestrator/audit/registry.py): the
recorder copies each registered version, and recovery writes back what Redis lost, in each
workflow's order, leaving what Redis has (a version registered again by hand) as it is."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis as redis_lib

from orchestrator import Client, Workflow
from orchestrator.audit import AuditStore, registry
from orchestrator.audit.models import registry as registry_table
from orchestrator.audit.recorder import Recorder
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def flow(wid: str, n: int) -> Workflow:
    return Workflow(wid).step("a", "builtin", "echo", params={"n": n})


def test_the_recorder_copies_the_registry_and_recovery_writes_back_what_redis_lost(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, key_prefix=f"rg{uuid.uuid4().hex[:8]}")
    client = Client(settings)
    store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}")
    store.upgrade()
    r = redis_lib.Redis.from_url(redis_url)
    try:
        for n in (1, 2, 3):
            client.register(flow("alpha", n))
        client.register(flow("beta", 1).build())
        recorder = Recorder(store, r, client.keys)
        recorder.registry.interval = 0  # type: ignore[union-attr]
        recorder.run_once(block=0.01)
        with store.connect() as conn:
            rows = conn.execute(
                registry_table.select().order_by(
                    registry_table.c.workflow_id, registry_table.c.position
                )
            ).all()
        assert [(x.workflow_id, x.version) for x in rows] == [
            ("alpha", "1"), ("alpha", "2"), ("alpha", "3"), ("beta", "1"),
        ]  # fmt: skip
        # Redis loses the registry; someone registers beta's version 1 again by hand, changed.
        r.delete(
            client.keys.workflows,
            *(client.keys.workflow(w) for w in ("alpha", "beta")),
            *(client.keys.workflow_versions(w) for w in ("alpha", "beta")),
        )
        again = client.register(flow("beta", 9))
        assert again.version == "1"
        restored = registry.restore(store, r, client.keys)
        assert restored == [("alpha", "1"), ("alpha", "2"), ("alpha", "3")]
        assert client.versions("alpha") == ["1", "2", "3"] and client.versions("beta") == ["1"]
        assert client.get_definition("alpha", "2").steps[0].params == {"n": 2}
        assert client.get_definition("beta").steps[0].params == {"n": 9}  # kept as Redis has it
        assert registry.restore(store, r, client.keys) == []  # nothing left to write back
    finally:
        client.close()
        store.dispose()
        r.close()
