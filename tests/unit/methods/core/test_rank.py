"""The start and the end every method's rank shares (methods/core/rank.py), and the check that no
method module carries its own copy of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from launcher.contract import Result, JobDir, read_result
from launcher.heartbeat import read as read_heartbeat
from methods.core.callbacks import CheckpointCallback, HeartbeatCallback, MetricsCallback
from methods.core.rank import RankJob
from methods.registry import METHODS
from tests.helpers import REPO, make_job


@pytest.fixture
def rank(monkeypatch):
    def at(n: int, world: int = 2) -> None:
        monkeypatch.setenv("RANK", str(n))
        monkeypatch.setenv("LOCAL_RANK", str(n))
        monkeypatch.setenv("WORLD_SIZE", str(world))
    return at


def test_start_beats_loading_before_anything_else(tmp_path: Path, rank) -> None:
    rank(1)
    r = RankJob.start(make_job(tmp_path / "j"))
    hb = read_heartbeat(JobDir(tmp_path / "j").heartbeat(1))
    assert hb is not None and hb.phase == "loading" and hb.rank == 1 and hb.attempt == 1
    assert (r.rank, r.ranks.world_size) == (1, 2)


def test_start_without_the_model_a_method_needs_names_it(tmp_path: Path, rank) -> None:
    rank(0)
    with pytest.raises(ValueError, match=r"sft needs a model \(a mixture of experts\)"):
        RankJob.start(make_job(tmp_path / "j", model=None), needs_model=" (a mixture of experts)")
    RankJob.start(make_job(tmp_path / "k", model=None))   # a method that needs none: fine


def test_finish_rank0_writes_the_result_then_beats_done(tmp_path: Path, rank) -> None:
    rank(0)
    r = RankJob.start(make_job(tmp_path / "j"))
    assert r.finish(Result(status="succeeded", metrics={"fa": 50.0}, extra={"judge": "x"}), 7, 9) == 0
    res = read_result(JobDir(tmp_path / "j").result)
    assert res is not None and res.metrics == {"fa": 50.0} and res.extra == {"judge": "x"}
    hb = read_heartbeat(JobDir(tmp_path / "j").heartbeat(0))
    assert hb is not None and (hb.phase, hb.step, hb.total_steps) == ("done", 7, 9)


def test_finish_on_other_ranks_or_without_a_result_writes_none(tmp_path: Path, rank) -> None:
    rank(1)
    RankJob.start(make_job(tmp_path / "j")).finish(Result(status="succeeded"), 3)
    assert not JobDir(tmp_path / "j").result.exists()
    assert read_heartbeat(JobDir(tmp_path / "j").heartbeat(1)).phase == "done"
    rank(0)
    RankJob.start(make_job(tmp_path / "k")).finish(None, 3)
    assert not JobDir(tmp_path / "k").result.exists()


def test_training_callbacks_mark_the_checkpoint_before_the_heartbeat_leaves_saving(tmp_path: Path, rank) -> None:
    rank(0)
    r = RankJob.start(make_job(tmp_path / "j", attempt=2))
    cbs = r.training_callbacks()
    assert [type(c) for c in cbs] == [CheckpointCallback, HeartbeatCallback, MetricsCallback]
    assert cbs[1] is r.heartbeat
    assert r.recorder(["a"]).path == JobDir(tmp_path / "j").seen / "samples-rank-0.attempt-2.jsonl"


# The calls that make a rank's start and end: only methods/core makes them.
CORE_ONLY = {"write_result", "init_process_group", "destroy_process_group", "HeartbeatCallback", "SampleRecorder",
             "CheckpointCallback", "MetricsCallback", "setup_logging", "prepare_node"}
# command runs the user's script (its ranks are not ours); synthetic imports no torch by design.
OWN_PROCESS = {"command", "synthetic"}


def called_names(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def test_every_torch_method_starts_and_ends_through_the_core() -> None:
    modules = {info.module for name, info in METHODS.items() if name not in OWN_PROCESS}
    assert modules >= {"methods.sft", "methods.lisa", "methods.fabe", "methods.steermoe", "methods.fabe_eval",
                       "methods.steermoe_analysis", "methods.evaluate"}
    for module in sorted(modules):
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        calls = called_names(tree)
        assert not calls & CORE_ONLY, f"{module} makes its own {sorted(calls & CORE_ONLY)}: use methods.core"
        imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        starts = ("methods.core.rank", "RankJob") in imported and "start" in calls
        starts_finetune = any(("methods.core.finetune", f) in imported and f in calls for f in ("setup", "lora_model"))
        assert starts or starts_finetune, f"{module} does not start with RankJob.start (or core.finetune's setup / lora_model)"
        assert "finish" in calls or "finish_training" in calls, f"{module} does not end with the core's finish"
