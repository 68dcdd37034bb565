"""Per-sample training throughput of FABE (3 candidates) relative to SFT on the same model, measured
side by side:

    PYTHONPATH=. .venv/bin/python bench/fabe_vs_sft.py [--model smollm2|tiny] [--steps 12] [--rounds 2]

One process, one rank, no DeepSpeed, LoRA, batch 4. SFT trains on (prompt, best candidate) of the
same rows FABE trains on with all 3 candidates, so the ratio is the cost of scoring 3 candidates
instead of 1. FABE runs twice: with the prompt computed once for its candidates (`shared_prompt`,
the default) and with one full `prompt + candidate` sequence per candidate (naive). Runs alternate
(S F N S F N ...) so that a machine whose load changes affects all alike. Throughput is steady
state: the median time between consecutive steps (metrics.jsonl timestamps), so the first step's
lazy set-up and bursts of load from other processes are left out. It reports; it does not pass or
fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from launcher.atomic import read_jsonl
from launcher.spec import CheckpointSpec, DataSource, LoraSpec, ModelSpec, TrainingSpec
from tests.helpers import DATA, make_job

BATCH = 4
KINDS = ("sft", "fabe", "fabe_naive")


def sft_rows(dst: Path) -> Path:
    """The best-scored candidate of every FABE row as an SFT target."""
    rows = [json.loads(line) for line in (DATA / "fabe_ranked_mini.jsonl").read_text().splitlines()]
    out = []
    for r in rows:
        best = max(range(len(r["output"])), key=lambda j: r["score"][j])
        out.append({"instruction": r["instruction"], "input": r["input"], "output": r["output"][best]})
    dst.write_text("".join(json.dumps(r) + "\n" for r in out))
    return dst


def one(kind: str, model: ModelSpec, steps: int, root: Path, sft_data: Path, gc: bool) -> float:
    """Samples per second, steady state."""
    from methods import fabe, sft

    job_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    # LoRA dropout 0 for every kind: FABE shares the prompt only without dropout (methods.fabe.use_shared_prompt).
    training = TrainingSpec(max_steps=steps, lr=5e-4, batch_size=BATCH, max_length=160, lora=LoraSpec(dropout=0.0),
                            gradient_checkpointing=gc)
    if kind == "sft":
        job = make_job(job_dir, method="sft", job=kind, params={"template": "auto"}, model=model, training=training,
                       data={"train": DataSource(source=str(sft_data))}, checkpoint=CheckpointSpec(every=10_000, keep=2))
        sft.run(job)
    else:
        job = make_job(job_dir, method="fabe", job=kind, model=model, training=training,
                       params={"template": "auto", "shared_prompt": kind == "fabe"},
                       data={"train": DataSource(source=str(DATA / "fabe_ranked_mini.jsonl"))},
                       checkpoint=CheckpointSpec(every=10_000, keep=2))
        fabe.run(job)
    times = [m["time"] for m in sorted(read_jsonl(job_dir / "metrics.jsonl"), key=lambda m: m["step"])
             if m["loss"] is not None]
    # Median step time: a burst of load from another process on a shared machine moves one step, not all.
    return BATCH / statistics.median(b - a for a, b in zip(times, times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(var, None)
    model = ModelSpec(gguf="smollm2") if args.model == "smollm2" else ModelSpec(tiny="llama")
    runs: dict[str, list[float]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        sft_data = sft_rows(Path(tmp) / "sft_best.jsonl")
        for _ in range(args.rounds):
            for kind in KINDS:
                runs[kind].append(one(kind, model, args.steps, Path(tmp), sft_data, args.gradient_checkpointing))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"model {args.model}, {args.steps} steps x {args.rounds} rounds, batch {BATCH}, 1 rank, LoRA"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}, alternating")
    for kind in KINDS:
        print(f"  {kind:10s} samples/s " + " ".join(f"{v:.3f}" for v in runs[kind]))
    print(f"FABE (3 candidates, shared prompt) / SFT per-sample throughput (median): {med['fabe'] / med['sft']:.3f}")
    print(f"FABE (3 candidates, naive)         / SFT per-sample throughput (median): {med['fabe_naive'] / med['sft']:.3f}")
    print(f"shared prompt / naive: {med['fabe'] / med['fabe_naive']:.3f}")


if __name__ == "__main__":
    main()
