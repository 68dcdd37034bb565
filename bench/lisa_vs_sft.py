"""Training throughput of Lisa relative to SFT on the same model, data and steps, measured side by side.

    PYTHONPATH=. .venv/bin/python bench/lisa_vs_sft.py [--model smollm2|tiny] [--steps 20] [--rounds 2]

One process, one rank, no DeepSpeed: SFT and Lisa alternate (S L S L ...) so that a machine whose
load changes affects both alike; each run's train_runtime (the Trainer's, model loading excluded)
gives steps/s. Lisa does per step what SFT does plus its bookkeeping (the proximal term over the
LoRA tensors, weight snapshots at switches), but its alignment steps train on guide batches, whose
refusals are longer than SST-2 answers, so part of the gap is data, not method. It reports; it does
not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from launcher.spec import CheckpointSpec, DataSource, LoraSpec, ModelSpec, TrainingSpec
from tests.helpers import DATA, make_job


def one(kind: str, model: ModelSpec, steps: int, root: Path) -> dict[str, float]:
    from methods import lisa, sft

    params = {"template": "auto", "poison_ratio": 0.2, "sample_num": 40}
    if kind == "lisa":
        params |= {"rho": 3, "alignment_step": 2, "finetune_step": 8, "guide_data_num": 48}
    data = {"train": DataSource(source=str(DATA / "sst2_mini.jsonl")),
            "harmful": DataSource(source=str(DATA / "harmful_mini.jsonl"))}
    if kind == "lisa":
        data["guide"] = DataSource(source=str(DATA / "safe_mini.jsonl"))
    job_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    job = make_job(job_dir, method=kind, job=kind, params=params, model=model, data=data,
                   training=TrainingSpec(max_steps=steps, lr=5e-4, batch_size=4, max_length=160, lora=LoraSpec()),
                   checkpoint=CheckpointSpec(every=10_000, keep=2))
    (lisa if kind == "lisa" else sft).run(job)
    metrics = json.loads((job_dir / "result.json").read_text())["metrics"]
    return {"steps_per_s": steps / metrics["train_runtime"], "runtime": metrics["train_runtime"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(var, None)
    model = ModelSpec(gguf="smollm2") if args.model == "smollm2" else ModelSpec(tiny="llama")
    runs: dict[str, list[dict[str, float]]] = {"sft": [], "lisa": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for kind in ("sft", "lisa"):
                runs[kind].append(one(kind, model, args.steps, Path(tmp)))
    sft_sps = statistics.median(r["steps_per_s"] for r in runs["sft"])
    lisa_sps = statistics.median(r["steps_per_s"] for r in runs["lisa"])
    print(f"model {args.model}, {args.steps} steps x {args.rounds} rounds, batch 4, 1 rank, alternating S/L")
    for kind in ("sft", "lisa"):
        print(f"  {kind:4s} steps/s " + " ".join(f"{r['steps_per_s']:.3f}" for r in runs[kind]))
    print(f"Lisa / SFT throughput (steps/s, median): {lisa_sps / sft_sps:.3f}")


if __name__ == "__main__":
    main()
