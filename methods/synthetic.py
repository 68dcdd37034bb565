"""The `synthetic` method: a rank that imports no model and "trains" for N steps.

It writes the same heartbeat, metrics, checkpoint and result files a real job does and can
inject faults (hang, crash, OOM) so scheduling and recovery are tested cheaply.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.contract import append_jsonl, checkpoints, heartbeat, oomkill, read_json, write_json, JobDir, JobFile
from methods.params import SyntheticParams

CRASH_EXIT = 3
OOM_MESSAGE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (synthetic fault)"


def _faulty(p: SyntheticParams, job: JobFile, rank: int) -> bool:
    return rank in p.fault_ranks and job.attempt in p.fault_attempts


def _start_step(job: JobFile) -> int:
    if not job.resume_from:
        return 0
    try:
        state = read_json(Path(job.resume_from) / "state.json")
    except ValueError:
        # Like a real loader: the error, then a screenful of teardown noise after it.
        import traceback
        traceback.print_exc()
        for i in range(12):
            print(f"[synthetic] rank teardown: closing resource {i}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    if state is None:
        raise RuntimeError(f"checkpoint {job.resume_from} has no state.json")
    return int(state["step"])


def _exhaust_host_memory() -> None:
    """Allocate and touch memory until the cgroup's limit makes the kernel kill this process."""
    hoard = []
    while True:
        hoard.append(bytearray(b"x" * (16 << 20)))


def _hold_host_memory(mib: float) -> mmap.mmap | bytearray:
    """Resident host memory (an untouched allocation is not in the RSS). MAP_POPULATE faults every
    page in one call, like a GPU allocation filled at once: touching pages one by one from Python
    costs several times more, and on a small VM that cost, not the scheduler, would set how fast
    packed jobs start."""
    size = int(mib * (1 << 20))
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if populate and size:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    buf = bytearray(size)
    buf[::4096] = b"\x01" * len(range(0, len(buf), 4096))
    return buf


def _hold_gpu_memory(mib: float) -> object:
    """Real memory on this rank's GPU, written to so it is really backed: what an OOM needs to be real.
    torch only here: the synthetic method otherwise imports no model and no torch."""
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("synthetic: params.cuda_mib_per_sample needs a CUDA device (this rank sees none)")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    held = torch.empty(int(mib * (1 << 20)), dtype=torch.uint8, device="cuda")
    held.fill_(1)   # raises torch.OutOfMemoryError ("CUDA out of memory") when it does not fit
    torch.cuda.synchronize()
    return held


def run(job: JobFile) -> int:
    p = SyntheticParams.model_validate(job.params)
    rank = int(os.environ.get("RANK", "0"))
    jd = JobDir(Path(job.job_dir))
    hb_path = jd.heartbeat(rank)

    def beat(step: int, phase: heartbeat.Phase, loss: float | None = None, progress: int = 0) -> None:
        heartbeat.write(hb_path, heartbeat.Heartbeat(rank=rank, step=step, total_steps=p.steps, phase=phase,
                                                     pid=os.getpid(), loss=loss, attempt=job.attempt, progress=progress,
                                                     rss_hwm_mib=heartbeat.own_peak_rss_mib()))

    def injected(fault: str) -> None:
        """When each fault struck, by the job's own clock: what bench/faults.py measures detection from."""
        append_jsonl(jd.faults, {"fault": fault, "rank": rank, "attempt": job.attempt, "time": time.time()})

    def stall(what: str) -> None:
        injected("hang")
        print(f"[synthetic] injected hang {what}", flush=True)
        while True:  # no progress, no exit: only a kill ends this
            time.sleep(3600)

    beat(0, "loading")
    time.sleep(p.startup_time)
    step = _start_step(job)
    print(f"[synthetic] rank {rank} attempt {job.attempt} starting at step {step}/{p.steps}", flush=True)
    faulty = _faulty(p, job, rank)
    if p.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if faulty and p.host_oom_at_step:
        cg = oomkill.join_limited_cgroup(256 << 20)
        print(f"[synthetic] rank {rank} joined memory cgroup {cg} (256 MiB)", flush=True)
    held = _hold_gpu_memory(p.cuda_mib_per_sample * job.training.batch_size) if p.cuda_mib_per_sample else None
    hoard = [_hold_host_memory(p.host_mib)] if p.host_mib else []
    if p.spawn_child:
        # Not covered by the parent-death signal (not inherited): only the launcher's sweep ends it.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
    while step < p.steps:
        time.sleep(p.step_time)
        step += 1
        loss = 1.0 / (step + 1)
        if faulty and p.crash_at_step == step:
            injected("crash")
            print(f"[synthetic] injected crash at step {step}", file=sys.stderr, flush=True)
            return CRASH_EXIT
        if faulty and p.oom_at_step == step:
            injected("oom")
            print(OOM_MESSAGE, file=sys.stderr, flush=True)
            return 1
        if faulty and p.hang_at_step == step:
            stall(f"at step {step}")
        if faulty and p.host_oom_at_step == step:
            injected("host-oom")
            _exhaust_host_memory()
        if faulty and p.host_grow_at_step == step:
            injected("grow")
            hoard.append(_hold_host_memory(p.host_grow_mib))
            print(f"[synthetic] rank {rank} now holds {p.host_mib + p.host_grow_mib:.0f} MiB", flush=True)
        beat(step, "training", loss)
        if p.eval_every and step % p.eval_every == 0:
            # Like the Trainer: evaluation after the step, batch by batch, each batch a heartbeat.
            for b in range(p.eval_batches):
                beat(step, "evaluating", loss, progress=b)
                if faulty and p.hang_in_eval_at_step == step and b == 1:
                    stall(f"in the evaluation after step {step}")
                time.sleep(p.eval_time / p.eval_batches)
            beat(step, "training", loss)
        if rank == 0:
            append_jsonl(jd.metrics, {"step": step, "loss": loss, "time": time.time(), "attempt": job.attempt})
            if step % job.checkpoint.every == 0 or step == p.steps:
                beat(step, "saving", loss)
                ckpt = jd.checkpoints / f"checkpoint-{step}"
                write_json(ckpt / "state.json", {"step": step})
                if faulty and p.hang_in_save_at_step == step:
                    stall(f"while saving checkpoint-{step}")
                time.sleep(p.save_time)
                if faulty and p.crash_in_save_at_step == step:
                    injected("crash-in-save")
                    print(f"[synthetic] injected crash while saving checkpoint-{step}", file=sys.stderr, flush=True)
                    os._exit(CRASH_EXIT)  # no marker: this checkpoint stays incomplete
                checkpoints.mark_complete(ckpt, step)
                if faulty and p.corrupt_checkpoint_at_step == step:
                    size = (ckpt / "state.json").stat().st_size
                    (ckpt / "state.json").write_bytes(b"\x00" * size)   # the manifest's size still matches
                checkpoints.prune(jd.checkpoints, job.checkpoint.keep)
                beat(step, "training", loss)
    del held
    beat(step, "done")
    if rank == 0:
        status = "failed" if p.fail_result else "succeeded"
        write_json(jd.result, {"status": status, "metrics": {"steps": step, "final_loss": 1.0 / (step + 1)}})
    return 0
