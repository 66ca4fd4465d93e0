"""Retention is applied by finalize after each successful run, through a real worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Deployment, sqlite_job
from tests.integration.runs import start, wait_final

pytestmark = pytest.mark.integration


def test_second_success_prunes_the_first_with_keep_last_one(
    world: Deployment, source_db: Path
) -> None:
    queue = world.queue()
    world.write_config([sqlite_job("kept", source_db, queue, retention={"keep_last": 1})])
    world.worker([queue])
    first = wait_final(world, start(world, "kept"))
    second = wait_final(world, start(world, "kept"))
    assert first["status"] == second["status"] == "success"

    from tests.integration.runs import store_of

    pruned = store_of(world).get(first["run_id"])
    assert pruned["artifact_deleted"] is True
    assert not (world.storage / first["artifact"]["key"]).exists()
    assert not (world.storage / first["artifact"]["manifest"]).exists()
    assert (world.storage / second["artifact"]["key"]).exists()
    assert "artifact_deleted" not in store_of(world).get(second["run_id"])
