"""Run directories: secrets redacted, ${env:NAME} expansion, plan.yaml recorded, job files with references filled."""

from __future__ import annotations

import pytest
import yaml

from launcher import rundir
from launcher.layout import RunDir
from launcher.spec import JobFile

SECRET = "hf_SuperSecretValue123"

PLAN = """
    name: rd
    defaults:
      model: {tiny: llama}
      env: {HF_TOKEN: "${env:HF_TOKEN}"}
    jobs:
      up: {method: synthetic, params: {steps: 3}}
      sft:
        method: sft
        needs: [up]
        data: {train: train.jsonl}
        model: {tiny: llama, adapter: "${up.checkpoints}"}
        env: {WANDB_API_KEY: LITERAL_KEY_VALUE, MODE: "fast-${env:MODE_SUFFIX}", PLAIN: "x"}
"""


def test_redact_any_depth():
    obj = {"HF_TOKEN": "a", "jobs": {"x": {"env": {"hf_token": "b", "MY_API_KEY": "c", "OK": "d", "EMPTY_TOKEN": ""}},
                                     "list": [{"db_password": "e", "n": 1}, "plain", ["AWS_SECRET_ACCESS_KEY"]]},
           "tokenizer": "keep", "credentials_file": "/x"}
    assert rundir.redact(obj) == {
        "HF_TOKEN": "***",
        "jobs": {"x": {"env": {"hf_token": "***", "MY_API_KEY": "***", "OK": "d", "EMPTY_TOKEN": ""}},
                 "list": [{"db_password": "***", "n": 1}, "plain", ["AWS_SECRET_ACCESS_KEY"]]},
        "tokenizer": "keep",
        "credentials_file": "***",
    }
    assert obj["HF_TOKEN"] == "a"          # input untouched


@pytest.mark.parametrize("key,secret", [
    ("HF_TOKEN", True), ("hfToken", True), ("token", True), ("HUGGING_FACE_HUB_TOKEN", True), ("WANDB_API_KEY", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("db_password", True),
    ("tokenizer", False), ("max_new_tokens", False), ("tokens", False), ("template", False),
])
def test_redact_key_names(key, secret):
    assert rundir.redact({key: "v"}) == {key: "***" if secret else "v"}


def test_recorded_plan_keeps_the_tokenizer(load, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    plan = load(PLAN.replace("adapter: \"${up.checkpoints}\"", f"adapter: \"${{up.checkpoints}}\", tokenizer: {tok}"))
    rd = rundir.create(plan, tmp_path / "runs", "run-t")
    assert yaml.safe_load(rd.plan.read_text())["jobs"]["sft"]["model"]["tokenizer"] == str(tok)


def test_job_env_expands_env_refs(load):
    plan = load(PLAN)
    env = rundir.job_env(plan.jobs["sft"], {"HF_TOKEN": SECRET, "MODE_SUFFIX": "v2"})
    assert env == {"HF_TOKEN": SECRET, "WANDB_API_KEY": "LITERAL_KEY_VALUE", "MODE": "fast-v2", "PLAIN": "x"}
    assert rundir.job_env(plan.jobs["up"], {"HF_TOKEN": SECRET}) == {"HF_TOKEN": SECRET}


def test_job_env_missing_variable_names_it(load):
    plan = load(PLAN)
    with pytest.raises(KeyError) as ei:
        rundir.job_env(plan.jobs["sft"], {"HF_TOKEN": SECRET})
    assert ei.value.args[0] == "jobs.sft.env.MODE: environment variable MODE_SUFFIX is not set"


def test_job_env_uses_os_environ_by_default(load, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("MODE_SUFFIX", raising=False)
    plan = load(PLAN)
    assert rundir.job_env(plan.jobs["up"]) == {"HF_TOKEN": SECRET}
    with pytest.raises(KeyError, match="MODE_SUFFIX"):
        rundir.job_env(plan.jobs["sft"])


def test_create_writes_plan_without_secrets_and_refuses_existing(load, tmp_path):
    plan = load(PLAN, sets=[f"jobs.up.env.HF_TOKEN={SECRET}"])
    rd = rundir.create(plan, tmp_path / "runs", "run-1")
    assert rd.root == (tmp_path / "runs" / "run-1").resolve()
    assert (rd.root / "jobs").is_dir()
    text = rd.plan.read_text()
    assert SECRET not in text and "LITERAL_KEY_VALUE" not in text
    recorded = yaml.safe_load(text)
    assert recorded["jobs"]["up"]["env"]["HF_TOKEN"] == "***"
    assert recorded["jobs"]["sft"]["env"] == {"WANDB_API_KEY": "***", "MODE": "fast-${env:MODE_SUFFIX}", "PLAIN": "x"}
    # a reference names a variable, holds no secret: kept, so bin/resume resolves it again
    assert recorded["defaults"]["env"]["HF_TOKEN"] == "${env:HF_TOKEN}"
    assert recorded["jobs"]["up"]["params"] == {"steps": 3}
    assert plan.raw["jobs"]["up"]["env"]["HF_TOKEN"] == SECRET      # the in-memory plan keeps the value
    with pytest.raises(FileExistsError):
        rundir.create(plan, tmp_path / "runs", "run-1")


def test_new_run_id_is_unique_and_named_after_plan(load):
    plan = load(PLAN)
    a, b = rundir.new_run_id(plan), rundir.new_run_id(plan)
    assert a.startswith("rd-") and a != b


def test_job_file_fills_references(load, tmp_path):
    plan = load(PLAN)
    rd = rundir.create(plan, tmp_path / "runs", "run-2")
    jf = rundir.job_file(plan, plan.jobs["sft"], rd, attempt=2, resume_from="/x/checkpoint-4")
    assert jf.model.adapter == str(rd.root / "jobs" / "up" / "checkpoints")
    assert plan.jobs["sft"].config.model.adapter == "${up.checkpoints}"    # the plan stays symbolic
    assert jf.job_dir == str(rd.root / "jobs" / "sft")
    assert jf.upstream == {"up": str(rd.root / "jobs" / "up")}
    assert (jf.run_id, jf.attempt, jf.resume_from, jf.method) == ("run-2", 2, "/x/checkpoint-4", "sft")
    assert jf.deepspeed["train_batch_size"] == 1
    path = rundir.write_job_file(jf, rd)
    assert path == rd.root / "jobs" / "sft" / "job-2.json"
    assert JobFile.model_validate_json(path.read_text()) == jf


def test_find_run(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="no runs under"):
        rundir.find_run(runs, None)
    for name, mtime in (("old", 1000), ("new", 2000)):
        d = runs / name
        d.mkdir(parents=True)
        (d / "run.db").write_text("")
        (d / "plan.yaml").write_text("")
        import os
        os.utime(d / "plan.yaml", (mtime, mtime))
    assert rundir.find_run(runs, None) == RunDir((runs / "new").resolve())
    assert rundir.find_run(runs, "old") == RunDir((runs / "old").resolve())
    assert rundir.find_run(runs, str(runs / "old")) == RunDir((runs / "old").resolve())
    with pytest.raises(FileNotFoundError, match="no run 'ghost'"):
        rundir.find_run(runs, "ghost")


def test_recorded_plan_reloads_for_resume(load, tmp_path):
    """bin/resume re-validates the recorded (redacted) plan.yaml: redaction must not touch non-secrets
    such as model.tokenizer or an eval job's max_new_tokens."""
    from launcher.plan import load_plan
    tok = tmp_path / "tok"
    tok.mkdir()
    (tmp_path / "eval.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    plan = load(f"""
        jobs:
          hs:
            method: eval_hs
            model: {{tiny: llama, tokenizer: {tok}}}
            data: {{eval: eval.jsonl}}
            params: {{max_new_tokens: 64, num_samples: 5}}
            env: {{HF_TOKEN: literal-secret}}
    """)
    rd = rundir.create(plan, tmp_path / "runs", "run-r")
    again = load_plan(rd.plan, base_dir=tmp_path)
    job = again.jobs["hs"]
    assert job.method_params["max_new_tokens"] == 64
    assert job.config.model.tokenizer == str(tok)
    assert job.config.env == {"HF_TOKEN": "***"}


def test_env_references_survive_redaction_and_resume_reads_the_environment(load, tmp_path):
    """Issue 11: after bin/resume the ranks got HF_TOKEN=***. A ${env:NAME} reference is kept in
    plan.yaml (a name, no secret), so a resume resolves it from its own environment again."""
    from launcher.plan import load_plan
    (tmp_path / "eval.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    plan = load("""
        jobs:
          hs:
            method: eval_hs
            model: {tiny: llama}
            data: {eval: eval.jsonl}
            env: {HF_TOKEN: "${env:HF_TOKEN}", WANDB_API_KEY: literal-key}
    """)
    rd = rundir.create(plan, tmp_path / "runs", "run-s")
    text = rd.plan.read_text()
    assert "literal-key" not in text and "${env:HF_TOKEN}" in text
    again = load_plan(rd.plan, base_dir=tmp_path).jobs["hs"]
    again.config.env.pop("WANDB_API_KEY")
    assert rundir.job_env(again, {"HF_TOKEN": "hf_resumed"}) == {"HF_TOKEN": "hf_resumed"}
    # A literal secret cannot come back from a redacted copy: a clear error, not "***" in the ranks.
    with pytest.raises(KeyError, match=r'jobs.hs.env.WANDB_API_KEY: .* write it as "\$\{env:WANDB_API_KEY\}"'):
        rundir.job_env(load_plan(rd.plan, base_dir=tmp_path).jobs["hs"], {"HF_TOKEN": "hf_resumed"})
