"""Method cost against SFT on the same tiny model and batch: Lisa / SFT per step, FABE (3 candidates) /
SFT per sample, measured side by side in one process.

    PYTHONPATH=. .venv/bin/python -m bench --only methods
    (the worker it starts: python -m bench.method_cost --worker OUT.json --steps N --rounds R [--naive])

Reuses bench/lisa_vs_sft.py and bench/fabe_vs_sft.py (`one()` each): 1 rank, no DeepSpeed, LoRA,
batch 4, the tiny random-init Llama. Runs alternate (S L S F ... per round) so a load change hits
all alike. Throughput is the steady state, step 1 to the last step (metrics.jsonl), so the
first step's lazy set-up is left out. The worker is a separate process: a method that does not
import or crashes is reported as unavailable, the other numbers still come back.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import runs
from bench.results import REPO, PieceResult, Row, at_most, median

LISA_TARGET, FABE_TARGET = 1.10, 3.2
# --quick / full: steps per run, rounds. A run is seconds of steps, and on a shared 2-core machine one
# run's speed swings by a third from the next (seen: Lisa 50 then 37 steps/s): ratios are taken per
# round, between runs seconds apart, and their median reported with the range.
SIZES = {True: (100, 3), False: (300, 5)}


def steady_steps_per_s(job_dir: Path) -> float:
    from launcher.atomic import read_jsonl

    times = {m["step"]: m["time"] for m in read_jsonl(job_dir / "metrics.jsonl") if m.get("loss") is not None}
    first, last = min(times), max(times)
    return (last - first) / (times[last] - times[first])


def lisa_case(kind: str, steps: int, root: Path) -> dict[str, float]:
    """Steps/s of bench/lisa_vs_sft.py's SFT or Lisa run (SST-2 + harmful mix; Lisa adds the guide data)."""
    from bench.lisa_vs_sft import one
    from launcher.spec import ModelSpec

    r = one(kind, ModelSpec(tiny="llama"), steps, root)
    (job_dir,) = [d for d in root.iterdir() if d.is_dir() and d.name.startswith(f"{kind}-")]
    return {"steps_per_s": steady_steps_per_s(job_dir), "runtime_steps_per_s": r["steps_per_s"]}


def lisa_proximal_only_case(steps: int, root: Path) -> dict[str, float]:
    """As bench/lisa_vs_sft.py's Lisa run with alignment_step 0: SFT's data and batches plus Lisa's
    per-step work (proximal term, bookkeeping), so the data's share of a gap drops out."""
    from bench.lisa_vs_sft import DATA, make_job
    from launcher.spec import CheckpointSpec, DataSource, LoraSpec, ModelSpec, TrainingSpec
    from methods import lisa

    params = {"template": "auto", "poison_ratio": 0.2, "sample_num": 40, "rho": 3, "alignment_step": 0,
              "finetune_step": 8, "guide_data_num": 48}
    data = {"train": DataSource(source=str(DATA / "sst2_mini.jsonl")),
            "harmful": DataSource(source=str(DATA / "harmful_mini.jsonl")),
            "guide": DataSource(source=str(DATA / "safe_mini.jsonl"))}
    job_dir = root / "lisa-proximal-only"
    job = make_job(job_dir, method="lisa", job="lisa", params=params, model=ModelSpec(tiny="llama"), data=data,
                   training=TrainingSpec(max_steps=steps, lr=5e-4, batch_size=4, max_length=160, lora=LoraSpec()),
                   checkpoint=CheckpointSpec(every=10_000, keep=2))
    lisa.run(job)
    return {"steps_per_s": steady_steps_per_s(job_dir)}


def fabe_case(kind: str, steps: int, root: Path) -> dict[str, float]:
    """Samples/s of bench/fabe_vs_sft.py's runs: SFT on the best candidate, FABE on all 3."""
    from bench.fabe_vs_sft import BATCH, one, sft_rows
    from launcher.spec import ModelSpec

    sps = one(kind, ModelSpec(tiny="llama"), steps, root, sft_rows(root / "sft_best.jsonl"), False)
    return {"samples_per_s": sps, "steps_per_s": sps / BATCH}


def worker(out: Path, steps: int, rounds: int, naive: bool) -> int:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(var, None)
    cases: dict[str, Callable[[Path], dict[str, float]]] = {
        "sft_lisa_data": lambda root: lisa_case("sft", steps, root),
        "lisa": lambda root: lisa_case("lisa", steps, root),
        "lisa_proximal_only": lambda root: lisa_proximal_only_case(steps, root),
        "sft_fabe_data": lambda root: fabe_case("sft", steps, root),
        "fabe": lambda root: fabe_case("fabe", steps, root),
    }
    if naive:
        cases["fabe_naive"] = lambda root: fabe_case("fabe_naive", steps, root)
    res: dict[str, Any] = {k: [] for k in cases} | {"errors": {}}
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmp:
        for i in range(rounds):
            for kind, fn in cases.items():
                if kind in res["errors"]:
                    continue   # failed once: the method is unavailable, not worth another round
                root = Path(tmp) / f"{kind}-{i}"
                root.mkdir()
                try:
                    res[kind].append(fn(root))
                except Exception as e:
                    res["errors"][kind] = f"{type(e).__name__}: {e}"[:300]
                    res.setdefault("tracebacks", {})[kind] = traceback.format_exc()
                out.write_text(json.dumps(res, indent=1))   # partial results survive a later crash
    out.write_text(json.dumps(res, indent=1))
    return 0


def bench(quick: bool) -> PieceResult:
    steps, rounds = SIZES[quick]
    with tempfile.TemporaryDirectory(prefix="bench-methods-out-") as tmp:
        out = Path(tmp) / "methods.json"
        argv = [sys.executable, "-m", "bench.method_cost", "--worker", str(out), "--steps", str(steps),
                "--rounds", str(rounds), *([] if quick else ["--naive"])]
        # One torch thread, as under the launcher and torchrun: on a small shared machine a second
        # thread makes step times swing several-fold with the neighbours' load (seen here: 4x).
        env = runs.env() | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        if not out.exists():
            raise RuntimeError(f"worker exited {proc.returncode} with no results: {proc.stderr[-800:]}")
        res = json.loads(out.read_text())
    errors: dict[str, str] = res["errors"]
    if proc.returncode != 0:
        errors.setdefault("worker", f"exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    runs_of = {k: v for k, v in res.items() if isinstance(v, list)}
    med = {k: median(r["steps_per_s"] for r in v) for k, v in runs_of.items()}
    per_sample = {k: median(r["samples_per_s"] for r in v) for k, v in runs_of.items() if k.startswith(("sft_fabe", "fabe"))}

    def paired(base: str, case: str, key: str = "steps_per_s") -> tuple[float, float, float] | None:
        """base / case time per unit, per round (runs seconds apart): (median, lowest, highest)."""
        rs = [b[key] / c[key] for b, c in zip(runs_of.get(base, []), runs_of.get(case, []))]
        return (median(rs), min(rs), max(rs)) if rs else None  # type: ignore[return-value]

    common = (f"tiny Llama, 1 rank (1 thread), no DeepSpeed, LoRA, batch 4, {steps} steps x {rounds} round(s), "
              "steady state; ratio: the median of each round's own ratio (range in brackets)")
    rows: list[Row] = []
    why = errors.get("lisa") or errors.get("sft_lisa_data") or ("no result" if not (med.get("lisa") and med.get("sft_lisa_data")) else None)
    if why:
        rows.append(Row("Lisa / SFT time per step", f"unavailable: {why[:120]}", met=None))
    else:
        ratio, lo, hi = paired("sft_lisa_data", "lisa")  # type: ignore[misc]
        rows.append(Row("Lisa / SFT time per step", f"{1 / med['lisa']:.3f} s/step", 1 / med["lisa"],
                        baseline=f"SFT {1 / med['sft_lisa_data']:.3f} s/step", target=f"<= {LISA_TARGET:.2f} x SFT",
                        ratio=ratio, met=at_most(ratio, LISA_TARGET),
                        note=f"{common}: [{lo:.2f}-{hi:.2f}]; SST-2 + 20 % harmful mix, Lisa alignment 2 / fine-tune 8 steps on "
                             "safe_mini guide data (longer refusals than SST-2 answers: part of any gap is data)"))
        if med.get("lisa_proximal_only"):
            r, lo, hi = paired("sft_lisa_data", "lisa_proximal_only")  # type: ignore[misc]
            rows.append(Row("  Lisa with alignment off (SFT's data + proximal term) / SFT",
                            f"{1 / med['lisa_proximal_only']:.3f} s/step", 1 / med["lisa_proximal_only"],
                            baseline="SFT", ratio=r, note=f"diagnostic: the method's own per-step cost, the guide "
                                                           f"data's longer sequences left out [{lo:.2f}-{hi:.2f}]"))
    why = errors.get("fabe") or errors.get("sft_fabe_data") or ("no result" if not (per_sample.get("fabe") and per_sample.get("sft_fabe_data")) else None)
    if why:
        rows.append(Row("FABE (3 candidates) / SFT time per sample", f"unavailable: {why[:120]}", met=None))
    else:
        ratio, lo, hi = paired("sft_fabe_data", "fabe", "samples_per_s")  # type: ignore[misc]
        rows.append(Row("FABE (3 candidates) / SFT time per sample", f"{1e3 / per_sample['fabe']:.1f} ms/sample",
                        1 / per_sample["fabe"], baseline=f"SFT {1e3 / per_sample['sft_fabe_data']:.1f} ms/sample",
                        target=f"<= {FABE_TARGET:.1f} x SFT", ratio=ratio, met=at_most(ratio, FABE_TARGET),
                        note=f"{common}: [{lo:.2f}-{hi:.2f}]; fabe_ranked_mini rows, SFT on each row's best candidate; FABE shares "
                             "the prompt across its candidates (shared_prompt, the default; LoRA dropout 0, "
                             "without which it does not share)"))
        if per_sample.get("fabe_naive"):
            r = paired("sft_fabe_data", "fabe_naive", "samples_per_s")[0]  # type: ignore[index]
            rows.append(Row("FABE naive (one sequence per candidate) / SFT", f"{1e3 / per_sample['fabe_naive']:.1f} ms/sample",
                            1 / per_sample["fabe_naive"], baseline="SFT", ratio=r))
    return PieceResult("methods", rows, {"steps": steps, "rounds": rounds, "runs": {k: v for k, v in res.items()
                                                                                    if k != "tracebacks"},
                                         "tracebacks": res.get("tracebacks", {}), "errors": errors})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", type=Path, required=True, help="write the raw runs to this JSON file")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--naive", action="store_true", help="also FABE with one full sequence per candidate")
    a = ap.parse_args()
    return worker(a.worker, a.steps, a.rounds, a.naive)


if __name__ == "__main__":
    sys.exit(main())
