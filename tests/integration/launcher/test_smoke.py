"""README's main command, for real: `bin/launch plans/smoke.yaml` — 2 ranks, DeepSpeed ZeRO-2 on CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launcher import checkpoints
from launcher.atomic import read_json, read_jsonl
from launcher.journal import Journal
from tests.helpers import REPO
from tests.integration.launcher.conftest import status

pytestmark = pytest.mark.integration


def test_smoke_plan_succeeds_with_two_ranks_on_disjoint_data(runs: Path) -> None:
    out = subprocess.run([str(REPO / "bin" / "launch"), "plans/smoke.yaml", "--runs-dir", str(runs), "--no-dashboard"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # The end of bin/launch: the status table, then the results (the Trainer's bookkeeping left out).
    tail = out.stdout[out.stdout.index("results"):]
    assert "train_loss" in tail and "train_runtime" not in tail and "succeeded in" in tail
    st = status(runs)
    (job,) = st["jobs"]
    assert st["state"] == "succeeded" and job["state"] == "succeeded"
    assert job["step"] == job["total_steps"] == 30
    (att,) = job["attempts"]
    assert len(att["pids"]) == 2 and att["placement"][0]["gpus"] == ["0", "1"]

    jd = Path(st["dir"]) / "jobs" / "sft_tiny"
    result = read_json(jd / "result.json")
    assert result["status"] == "succeeded" and result["dist"] == {"backend": "gloo", "world_size": 2}
    assert (jd / "adapter" / "adapter_model.safetensors").is_file()
    for rank in (0, 1):
        assert "train_runtime" in (jd / "logs" / "attempt-1" / f"rank-{rank}.log").read_text() or rank == 1
        assert (jd / "logs" / "attempt-1" / f"rank-{rank}.log").stat().st_size > 0
    assert any(r.get("loss") is not None for r in read_jsonl(jd / "metrics.jsonl"))

    # The DESIGN.md trap: each rank must train on its own share, not on the whole data set.
    ids = {r: [i for rec in read_jsonl(jd / "seen" / f"samples-rank-{r}.attempt-1.jsonl") for i in rec["ids"]] for r in (0, 1)}
    first_epoch = {r: set(v[: len(v) // 2]) for r, v in ids.items()}
    assert ids[0] and ids[1] and first_epoch[0].isdisjoint(first_epoch[1])

    # Checkpoints: complete, the two newest kept, recorded in the journal, and they load.
    done = checkpoints.complete_checkpoints(jd / "checkpoints")
    assert [checkpoints.step_of(p) for p in done] == [20, 30]
    j = Journal(Path(st["dir"]) / "run.db", readonly=True)
    assert {row["step"] for row in j.checkpoints("sft_tiny")} >= {20, 30}
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"   # NFS-safe (journal.py)
    j.close()
    final = load_file(done[-1] / "adapter_model.safetensors")
    assert final.keys() == load_file(jd / "adapter" / "adapter_model.safetensors").keys()
    engine = torch.load(done[-1] / "global_step30" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert "module" in engine and json.loads((done[-1] / "trainer_state.json").read_text())["global_step"] == 30
