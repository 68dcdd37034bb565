"""Lisa with real rank processes: 2 x `python -m methods JOB.json`, DeepSpeed ZeRO-2 and ZeRO-3 on CPU,
and a rank killed mid-run, then every rank restarted from the newest complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from launcher import checkpoints as ckpt
from launcher import heartbeat
from launcher.atomic import read_jsonl
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, DataSource, LoraSpec, Resources
from methods.lisa_state import STATE_FILE, LisaSchedule, tensor_digest
from tests.helpers import (DATA, RankRun, deepspeed_config, kill_all, run_ranks, start_ranks, tiny_training, write_job_file,
                           zero3_partitioning)

pytestmark = pytest.mark.integration
WORLD = 2
STEPS = 10
# alignment 2 / finetune 3 over 10 steps: aligned steps 1-2, 6-7; rho 5 makes the proximal term matter.
PARAMS = {"template": "alpaca", "rho": 5.0, "alignment_step": 2, "finetune_step": 3, "guide_data_num": 16,
          "poison_ratio": 0.25, "sample_num": 32}


def common(stage: str) -> dict:
    training = tiny_training(batch_size=2, max_steps=STEPS, lr=1e-2, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    return dict(method="lisa", job="lisa", params=PARAMS, training=training,
                deepspeed=zero3_partitioning(training, WORLD) if stage == "zero3" else deepspeed_config(stage, training, WORLD),
                data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl")),
                      "harmful": DataSource(source=str(DATA / "harmful_mini.jsonl")),
                      "guide": DataSource(source=str(DATA / "safe_mini.jsonl"))},
                checkpoint=CheckpointSpec(every=2, keep=2), resources=Resources(gpus_per_node=WORLD))


def ok(run: RankRun) -> None:
    assert run.codes == [0] * WORLD, run.tail()


def per_step(jd: JobDir, attempt: int | None = None) -> dict[int, dict]:
    return {m["step"]: m for m in read_jsonl(jd.metrics) if m["loss"] is not None and attempt in (None, m["attempt"])}


def drifts(jd: JobDir, attempt: int | None = None) -> list[tuple[int, str, float]]:
    return [(m["step"], k, v) for m in read_jsonl(jd.metrics) if attempt in (None, m["attempt"])
            for k, v in m["extra"].items() if "drift" in k]


def expected_alignment_steps() -> list[int]:
    s, out = LisaSchedule.start(2, 3, True), []
    for k in range(1, STEPS + 1):
        s.begin_step()
        if s.uses_guide:
            out.append(k)
        s.end_step()
    return out


@pytest.fixture(scope="module")
def zero2(tmp_path_factory) -> JobDir:
    """The uninterrupted ZeRO-2 run: checked on its own, and the reference for ZeRO-3 and the resume."""
    root = tmp_path_factory.mktemp("lisa-zero2")
    run = run_ranks(write_job_file(root, **common("zero2")), WORLD)
    print(f"Lisa ZeRO-2 (2 ranks, {STEPS} steps): {run.wall_s:.1f} s")
    ok(run)
    return JobDir(root)


def test_zero2_two_ranks(zero2):
    jd = zero2
    result = json.loads(jd.result.read_text())
    assert result["status"] == "succeeded" and result["metrics"]["global_step"] == STEPS
    assert result["dist"] == {"backend": "gloo", "world_size": WORLD}
    assert result["metrics"]["lisa_switches"] == 3 and (jd.adapter / "adapter_model.safetensors").is_file()

    steps = per_step(jd)
    aligned = expected_alignment_steps()
    assert aligned == [1, 2, 6, 7]
    assert [k for k in sorted(steps) if steps[k]["extra"]["lisa_alignment"] == 1.0] == aligned
    assert [(s, k) for s, k, _ in drifts(jd)] == [(2, "alignment_drift_to_consensus"), (5, "finetuning_drift_to_consensus"),
                                                  (7, "alignment_drift_to_consensus")]
    # Gate: steps > 1 (0.1 x 10) from step 3 on; zero right after the switches before steps 3, 6, 8.
    assert {k for k in steps if steps[k]["extra"]["lisa_proximal"] > 0} == {4, 5, 7, 9, 10}

    # Each rank drew its own guide rows on aligned steps and fine-tuning rows (the poison mix) otherwise.
    for k in range(1, STEPS + 1):
        ids = [read_jsonl(jd.seen / f"samples-rank-{r}.attempt-1.jsonl")[k - 1] for r in range(WORLD)]
        assert all(rec["step"] == k for rec in ids)
        role = ("guide:",) if k in aligned else ("train:", "harmful:")
        flat = [i for rec in ids for i in rec["ids"]]
        assert all(i.startswith(role) for i in flat) and len(set(flat)) == len(flat) == WORLD * 2, (k, flat)

    for p in ckpt.complete_checkpoints(jd.checkpoints):
        st = torch.load(p / STATE_FILE, weights_only=True)
        assert st["global_step"] == st["steps"] == ckpt.step_of(p)


def test_zero3_matches_zero2(zero2, tmp_path):
    """ZeRO-3 keeps a partition of each LoRA tensor per rank (persistence threshold 0): the copies, the
    drift and the proximal term (and its gradient) work on gathered tensors, so the run must follow
    the ZeRO-2 one: same losses and proximal terms at every step, same drifts, same final adapter."""
    run = run_ranks(write_job_file(tmp_path, **common("zero3")), WORLD)
    print(f"Lisa ZeRO-3 (2 ranks, {STEPS} steps): {run.wall_s:.1f} s")
    ok(run)
    jd = JobDir(tmp_path)
    # Really partitioned: every LoRA tensor sliced, none whole; rank 0 holds half of the elements.
    part = json.loads(jd.result.read_text())["dist"]["zero3"]
    assert part["trainable"] > 0 and part["partitioned"] == part["trainable"] and part["persistent"] == 0, part
    assert part["local_numel"] * WORLD == part["full_numel"], part
    ref, got = per_step(zero2), per_step(jd)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    for k in ref:
        assert got[k]["loss"] == pytest.approx(ref[k]["loss"], rel=2e-5), k
        assert got[k]["extra"]["lisa_proximal"] == pytest.approx(ref[k]["extra"]["lisa_proximal"], rel=1e-3, abs=1e-9), k
    for (s1, k1, v1), (s2, k2, v2) in zip(drifts(zero2), drifts(jd), strict=True):
        assert (s1, k1) == (s2, k2) and v2 == pytest.approx(v1, rel=1e-3)
    st = torch.load(ckpt.complete_checkpoints(jd.checkpoints)[-1] / STATE_FILE, weights_only=True)
    ref_st = torch.load(ckpt.complete_checkpoints(zero2.checkpoints)[-1] / STATE_FILE, weights_only=True)
    for key in ("alignment_weights", "finetune_weights"):  # whole tensors, not partitions
        for n, t in ref_st[key].items():
            assert st[key][n].shape == t.shape
            torch.testing.assert_close(st[key][n], t, rtol=1e-3, atol=1e-5)
    # The proximal gradient rho (theta - anchor) went into ZeRO-3's reduce-scatter like any other:
    # after 10 steps (5 of them with the term on) theta itself is ZeRO-2's.
    from safetensors.torch import load_file
    a, b = load_file(zero2.adapter / "adapter_model.safetensors"), load_file(jd.adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-3, atol=1e-5)


def kill_rank_1_mid_run(job_file, jd: JobDir) -> list[int]:
    """Start both ranks; once rank 0 is past step 5 with a complete checkpoint, SIGKILL rank 1."""
    for _ in range(3):
        procs = start_ranks(job_file, WORLD)
        deadline = time.monotonic() + 240
        try:
            while all(p.poll() is None for p in procs):
                hb = heartbeat.read(jd.heartbeat(0))
                if hb and hb.step >= 5 and ckpt.latest_complete(jd.checkpoints) is not None:
                    os.killpg(procs[1].pid, signal.SIGKILL)  # rank 1 dies; rank 0 stalls in a collective
                    time.sleep(1.0)
                    break
                assert time.monotonic() < deadline, "no progress"
                time.sleep(0.05)
        finally:
            codes = kill_all(procs)  # then every rank goes, as the supervisor does before a restart
        logs = "".join(jd.rank_log(1, r).read_text(errors="replace") for r in range(WORLD))
        if codes[1] == -signal.SIGKILL or "EADDRINUSE" not in logs:  # else: a port race at start-up, again
            return codes
    return codes


def test_kill_a_rank_then_resume_with_the_same_lisa_state(zero2, tmp_path):
    jd = JobDir(tmp_path)
    codes = kill_rank_1_mid_run(write_job_file(tmp_path, **common("zero2")), jd)
    assert codes[1] == -signal.SIGKILL, "a rank ended before it could be killed"
    newest = ckpt.latest_complete(jd.checkpoints)
    step = ckpt.step_of(newest)
    assert step is not None and 4 <= step < STEPS
    saved = torch.load(newest / STATE_FILE, weights_only=True)

    run = run_ranks(write_job_file(tmp_path, attempt=2, resume_from=str(newest), **common("zero2")), WORLD)
    print(f"Lisa resume from checkpoint-{step} (2 ranks): {run.wall_s:.1f} s")
    ok(run)
    # Every rank restored exactly what was saved: mode, counters, guide position, both copies bitwise.
    for r in range(WORLD):
        restored = json.loads((jd.seen / f"lisa-restored-rank-{r}.attempt-2.json").read_text())
        assert {k: restored[k] for k in ("global_step", "mode", "steps", "clock", "switches", "guide_position")} == \
               {k: saved[k] for k in ("global_step", "mode", "steps", "clock", "switches", "guide_position")}
        assert restored["alignment_digest"] == tensor_digest(saved["alignment_weights"])
        assert restored["finetune_digest"] == tensor_digest(saved["finetune_weights"])
        assert [rec["step"] for rec in read_jsonl(jd.seen / f"samples-rank-{r}.attempt-2.jsonl")][0] == step + 1
    # ... and carried on as the uninterrupted run did: same states, losses, drift, final adapter.
    ref, resumed = per_step(zero2), per_step(jd, attempt=2)
    assert sorted(resumed) == list(range(step + 1, STEPS + 1))
    for k in resumed:
        assert resumed[k]["extra"]["lisa_alignment"] == ref[k]["extra"]["lisa_alignment"]
        assert resumed[k]["loss"] == pytest.approx(ref[k]["loss"], rel=1e-5, abs=1e-6), k
    assert [(s, k) for s, k, _ in drifts(jd, 2)] == [(s, k) for s, k, _ in drifts(zero2) if s > step]
    assert json.loads(jd.result.read_text())["metrics"]["lisa_switches"] == 3
    from safetensors.torch import load_file
    a, b = load_file(zero2.adapter / "adapter_model.safetensors"), load_file(jd.adapter / "adapter_model.safetensors")
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-6)
