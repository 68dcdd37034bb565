"""Shared test helpers: job files, DeepSpeed configs filled like the launcher fills them, rank processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import dsconfig
from launcher.layout import JobDir
from launcher.spec import (CheckpointSpec, DataSource, JobFile, LoraSpec, ModelSpec, Resources, TrainingSpec)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "plans" / "data"
DS_CONFIGS = REPO / "ds_configs"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_config(name: str, training: TrainingSpec, world_size: int) -> dict[str, Any]:
    """ds_configs/<name>.json with the batch sizes and clipping filled in as numbers by the launcher's
    own code: DeepSpeed's batch check fails on `"train_batch_size": "auto"` with HF's CPU path."""
    return dsconfig.resolve(json.loads((DS_CONFIGS / f"{name}.json").read_text()), training, world_size)


def zero3_partitioning(training: TrainingSpec, world_size: int) -> dict[str, Any]:
    """ZeRO-3 that partitions every parameter: `auto` persistence (10 x hidden = 640 elements on the
    tiny Llama) keeps the tests' LoRA tensors whole on every rank, so they would never meet a partition."""
    config = deepspeed_config("zero3", training, world_size)
    config["zero_optimization"] |= {"stage3_param_persistence_threshold": 0}
    return config


def tiny_training(**overrides: Any) -> TrainingSpec:
    base: dict[str, Any] = dict(max_steps=-1, epochs=1, lr=1e-3, batch_size=2, grad_accum=1, max_length=256,
                                seed=7, logging_steps=1, lora=LoraSpec(r=4, alpha=8, dropout=0.1))
    return TrainingSpec(**{**base, **overrides})


def make_job(job_dir: Path, **overrides: Any) -> JobFile:
    """A JobFile for an SFT run on the tiny Llama and the shipped SST-2-style data; fields overridable."""
    fields: dict[str, Any] = dict(
        run_id="test-run",
        job="sft",
        method="sft",
        params={"template": "alpaca"},
        model=ModelSpec(tiny="llama", seed=3),
        data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl"))},
        training=tiny_training(),
        deepspeed=None,
        checkpoint=CheckpointSpec(every=4, keep=2),
        resources=Resources(),
        job_dir=str(job_dir),
        attempt=1,
    )
    fields.update(overrides)
    return JobFile(**fields)


def write_job_file(job_dir: Path, **overrides: Any) -> Path:
    job = make_job(job_dir, **overrides)
    path = JobDir(job_dir).job_file(job.attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job.model_dump_json(indent=2))
    return path


def save_random_adapter(path: Path, model_seed: int = 3, lora: LoraSpec | None = None) -> Path:
    """A LoRA adapter for the tiny Llama with non-zero B (so it changes the function), as a stage-1
    job would leave behind."""
    import torch
    from peft import get_peft_model

    from methods.models import byte_tokenizer, lora_config, tiny_model

    # PEFT draws lora_A from the global RNG: seeded here, or the adapter (and every answer generated
    # with it) depends on what this process happened to draw before (the stacked-chain eval test
    # failed on a cold machine so: its 7 answers came out empty).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed)
        model = get_peft_model(tiny_model("llama", byte_tokenizer(), {}, model_seed),
                               lora_config(lora or LoraSpec(r=4, alpha=8, dropout=0.0)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(path)
    return path


@dataclass
class RankRun:
    codes: list[int]
    logs: list[Path]
    wall_s: float

    def tail(self, n: int = 60) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:]) for p in self.logs)


def start_ranks(job_file: Path, world: int, extra_env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """`python -m methods JOB.json` once per rank, each in its own session, as a node agent starts them."""
    job = JobFile.model_validate_json(job_file.read_text())
    logs = JobDir(Path(job.job_dir)).attempt_logs(job.attempt)
    logs.mkdir(parents=True, exist_ok=True)
    port, procs = free_port(), []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
               "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
        with open(logs / f"rank-{rank}.log", "wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "methods", str(job_file)], cwd=REPO, env=env,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def kill_all(procs: list[subprocess.Popen]) -> list[int]:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return [p.wait() for p in procs]


def run_ranks(job_file: Path, world_size: int, timeout: float = 300.0, extra_env: dict[str, str] | None = None) -> RankRun:
    """Run all ranks to the end. A failing rank ends the attempt at once (its peers would wait in a
    collective until the timeout), and a rendezvous port taken between free_port() and bind (other
    runs share the machine) is retried on a fresh port."""
    run = None
    for _ in range(3):
        start = time.monotonic()
        procs = start_ranks(job_file, world_size, extra_env)
        try:
            while any(p.poll() is None for p in procs) and not any(p.poll() not in (None, 0) for p in procs):
                if time.monotonic() - start > timeout:
                    break
                time.sleep(0.2)
        finally:
            codes = kill_all(procs)
        job = JobFile.model_validate_json(job_file.read_text())
        logs = [JobDir(Path(job.job_dir)).rank_log(job.attempt, r) for r in range(world_size)]
        run = RankRun(codes=codes, logs=logs, wall_s=time.monotonic() - start)
        if codes == [0] * world_size or "EADDRINUSE" not in run.tail(200):
            return run
    assert run is not None
    return run


# The command-line interfaces of the official Lisa scripts (git-disl/Lisa @68e3659), flags only:
# train.py's own add_argument calls (250-265) and dataclass fields (57-69), plus the
# transformers.TrainingArguments flags its shell scripts pass (script/alignment/SFT.sh,
# script/finetune/lisa_poison_ratio.sh); pred.py 12-17; eval_sentiment.py 7-8 (the judge's weights
# are a hub name in its code, line 15: there is no flag for them); sst2/pred_eval.py 12-16.
LISA_FLAGS = {
    "train.py": ("model_name_or_path", "data_path", "cache_dir", "optim", "model_max_length", "optimizer",
                 "lora_folder", "rho", "density", "poison_ratio", "sample_num", "benign_dataset", "vaccine_ratio",
                 "lamb", "track_embedding", "alternating", "finetune_step", "alignment_step", "guide_data_num",
                 "bf16", "output_dir", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "evaluation_strategy", "save_strategy", "save_steps",
                 "save_total_limit", "learning_rate", "weight_decay", "warmup_ratio", "lr_scheduler_type",
                 "logging_steps", "tf32", "eval_steps", "label_smoothing_factor"),
    "poison/evaluation/pred.py": ("model_folder", "lora_folder", "lora_folder2", "instruction_path", "output_path",
                                  "cache_dir"),
    "poison/evaluation/eval_sentiment.py": ("model_name", "input_path"),
    "sst2/pred_eval.py": ("model_folder", "lora_folder", "lora_folder2", "output_path", "cache_dir"),
}
LISA_SCRIPTS = tuple(LISA_FLAGS)


def fake_lisa_checkout(root: Path) -> Path:
    """Stand-ins for the official Lisa scripts plans/lisa_official_command.yaml runs: each parses
    the official script's flags with argparse and exits, so a plan that passes a flag the real
    script does not have fails here as it would there."""
    for f, flags in LISA_FLAGS.items():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("import argparse\nap = argparse.ArgumentParser()\n"
                              + "".join(f"ap.add_argument('--{k}')\n" for k in flags) + "ap.parse_args()\n")
    return root
