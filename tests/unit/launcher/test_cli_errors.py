"""`python -m launcher launch`: a bad plan exits 2 with its problems on stderr and starts nothing;
`--dry-run` prints the expanded jobs with their output paths and DeepSpeed configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from methods.params import SFTParams
from methods.registry import METHODS

REPO = Path(__file__).resolve().parents[3]


def launcher(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "SL_RUNS_DIR": str(cwd / "default-runs"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=120)


BAD = """\
defaults: {model: {tiny: llama}}
jobs:
  sft:
    method: sft
    data: {train: train.jsonl}
    training: {lrr: 0.1}
    params: {rhoo: 1}
  lisa: {method: lisaa, needs: [ghost]}
  other: {method: sft, data: {train: missing.jsonl}}
"""


def assert_nothing_started(tmp_path: Path) -> None:
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
    assert not (tmp_path / "default-runs").exists()


def test_bad_plan_exits_2_with_all_problems_and_no_run_dir(tmp_path):
    plan = tmp_path / "bad.yaml"
    plan.write_text(BAD)
    (tmp_path / "train.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    r = launcher("launch", str(plan), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.splitlines()
    assert lines[0] == "5 problem(s) in the plan; nothing was started:"
    assert sorted(lines[1:]) == sorted([
        f"  {plan}: jobs.sft.training.lrr: unknown key 'lrr' (did you mean 'lr'?); expected one of epochs, max_steps, "
        "lr, batch_size, grad_accum, weight_decay, scheduler, warmup_ratio, max_length, seed, logging_steps, "
        "gradient_checkpointing, precision, max_grad_norm, lora, report_to",
        f"  {plan}: jobs.sft.params.rhoo: unknown key 'rhoo'; expected one of {', '.join(SFTParams.model_fields)}",
        f"  {plan}: jobs.lisa.method: unknown method 'lisaa'; expected one of {', '.join(sorted(METHODS))}",
        f"  {plan}: jobs.lisa.needs: unknown job 'ghost' in needs; jobs are lisa, other, sft",
        f"  {plan}: jobs.other.data.train: missing data file {tmp_path.resolve() / 'missing.jsonl'} (a local path "
        "relative to the plan, or a full hub name such as stanfordnlp/sst2; a bare name like 'sst2' is ambiguous)",
    ])
    assert_nothing_started(tmp_path)


def test_dry_run_smoke_prints_jobs_outputs_and_ds_config(tmp_path):
    r = launcher("launch", str(REPO / "plans" / "smoke.yaml"), "--dry-run", "--runs-dir", str(tmp_path / "runs"),
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "plan smoke" in out and "1 job(s)" in out
    assert "1. sft_tiny  method=sft" in out
    assert "resources: 1 node(s) x 2 GPU(s) = world size 2" in out
    assert f"data.train: {REPO / 'plans' / 'data' / 'sst2_mini.jsonl'}" in out
    assert f"deepspeed: ZeRO-2 from {REPO / 'ds_configs' / 'zero2.json'}" in out
    output_lines = [line.strip() for line in out.splitlines() if line.strip().startswith("output:")]
    assert len(output_lines) == 1 and output_lines[0].endswith("/<run-id>/jobs/sft_tiny/")
    cfg = json.loads(next(line for line in out.splitlines() if line.strip().startswith("{")))
    assert cfg["train_batch_size"] == 4                     # batch 2 x accum 1 x world 2
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_accumulation_steps"] == 1
    assert cfg["zero_optimization"]["stage"] == 2
    assert "Traceback" not in r.stderr
    assert_nothing_started(tmp_path)


# The remaining cases run in-process (same entry point, no interpreter start-up per case).

def in_process(capsys, *argv: str) -> tuple[int, str, str]:
    from launcher.__main__ import main
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("text,fragment", [
    ("jobs: [\n", "(yaml): not valid YAML"),
    ("jobs:\n  a: {method: synthetic, needs: [b]}\n  b: {method: synthetic, needs: [a]}\n",
     "jobs.a.needs: dependency cycle: a -> b -> a"),
    ("jobs:\n  a: {method: synthetic, resources: {gpus_per_node: 64}}\n",
     "jobs.a.resources: gpus_per_node 64 is more GPUs than any node has"),
])
def test_other_bad_plans_exit_2(tmp_path, capsys, monkeypatch, text, fragment):
    monkeypatch.chdir(tmp_path)
    plan = tmp_path / "bad.yaml"
    plan.write_text(text)
    code, out, err = in_process(capsys, "launch", str(plan), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert fragment in err and "1 problem(s) in the plan; nothing was started:" in err
    assert_nothing_started(tmp_path)


def test_missing_plan_file_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "launch", str(tmp_path / "nope.yaml"), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert f"{tmp_path / 'nope.yaml'}: (file): no such plan file" in err
    assert_nothing_started(tmp_path)


def test_bad_set_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "launch", str(REPO / "plans" / "pipeline_synthetic.yaml"),
                                "--set", "jobs.lisa.params.steps", "--set", "jobs.lisa.params.stepz=3",
                                "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert "--set: --set 'jobs.lisa.params.steps': expected key.path=value" in err
    assert "jobs.lisa.params.stepz: unknown key 'stepz'" in err
    assert_nothing_started(tmp_path)


def test_missing_env_var_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SL_TEST_NOT_SET_ANYWHERE", raising=False)
    plan = tmp_path / "env.yaml"
    plan.write_text("jobs:\n  a: {method: synthetic, env: {HF_TOKEN: '${env:SL_TEST_NOT_SET_ANYWHERE}'}}\n")
    code, out, err = in_process(capsys, "launch", str(plan), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert "jobs.a.env.HF_TOKEN: environment variable SL_TEST_NOT_SET_ANYWHERE is not set" in err
    assert_nothing_started(tmp_path)


def test_unknown_command_exits_2(capsys):
    code, out, err = in_process(capsys, "frobnicate")
    assert code == 2 and "usage: python -m launcher" in err


def test_dry_run_pipeline_lists_every_job_in_order(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "launch", str(REPO / "plans" / "pipeline_synthetic.yaml"), "--dry-run")
    assert code == 0, err
    heads = [line.split()[1] for line in out.splitlines() if line[:1].isdigit() and ". " in line]
    assert heads == ["stage1_align", "stage1_hs", "lisa", "sft_baseline", "lisa_hs", "lisa_fa", "sft_hs", "sft_fa"]
    assert out.count("output: ") == 8
    assert "deepspeed:" not in out                            # synthetic jobs use none
    assert_nothing_started(tmp_path)


@pytest.mark.parametrize("run_id,fragment", [
    ("r" * 300, "300 bytes; at most 255"),
    ("a/b", "a plain file name"),
    ("..", "a plain file name"),
])
def test_bad_run_id_exits_2_before_anything(tmp_path, capsys, monkeypatch, run_id, fragment):
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, "launch", str(REPO / "plans" / "pipeline_synthetic.yaml"), "--run-id", run_id,
                                "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert err.startswith("--run-id ") and fragment in err and "nothing was started" in err
    assert_nothing_started(tmp_path)


@pytest.mark.parametrize("command", ["status", "logs", "resume", "report"])
def test_over_long_run_argument_is_no_such_run(tmp_path, capsys, command):
    args = [command, "r" * 300] + (["job"] if command == "logs" else []) + ["--runs-dir", str(tmp_path)]
    code, out, err = in_process(capsys, *args)
    assert code == 2 and "no run 'rrrr" in err
