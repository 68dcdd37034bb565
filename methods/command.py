"""The `command` method: a researcher's own script, run unchanged as one rank, and watched from outside.

This process is the rank the launcher started (torchrun's environment already set); it starts the
script as its child in the same process group, copies the script's output to the rank log as it
comes, and once a second turns what it can see into the heartbeat the supervisor judges: the step
its output gives, output bytes, files changing under the job directory, the CPU time of its process
tree, its GPU memory and utilisation, and a heartbeat file of its own if it writes one
(`$SL_HEARTBEAT_FILE`, the built-in methods' format). With `launcher: single` this is the node's
only process, and the script is a launcher line that starts the workers itself (its output, CPU
time and files are theirs too). On a restart it appends the resume arguments
for the newest whole checkpoint the script saved. Its exit code is the script's.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

from launcher.contract import JobDir, JobFile, Result, heartbeat, write_result
from methods import command_ckpt
from methods.command_signals import Activity, ProgressParser, files_fingerprint, lines
from methods.params import CommandParams

SAMPLE_S = 1.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before its exec: killed when this wrapper dies, as the rank is when its host dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


ENV_RE = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


# What a torchrun-style rank reads, and what a node-level launcher line must not inherit from us:
# torchrun, deepspeed and accelerate set them for the workers they start.
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def placeholders(job: JobFile, rank: int) -> dict[str, str]:
    """The argv's {names}: where the job runs, and what a launcher line (torchrun --nnodes ...) needs."""
    r = job.resources
    return {"dir": job.job_dir, "rank": str(rank), "nnodes": str(r.nodes),
            "node_rank": os.environ.get("NODE_RANK", "0"), "nproc_per_node": str(r.gpus_per_node),
            "master_addr": os.environ.get("MASTER_ADDR", "127.0.0.1"), "master_port": os.environ.get("MASTER_PORT", "")}


def _fill(arg: str, names: dict[str, str]) -> str:
    """{dir}, {rank}, the launcher-line names, and {env:NAME} (the rank's environment, which holds the plan's `env`)."""
    def env(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise SystemExit(f"[command] {arg!r} names {m.group(0)}, which is not set: add it to the job's env")
        return os.environ[m.group(1)]
    for k, v in names.items():
        arg = arg.replace("{" + k + "}", v)
    return ENV_RE.sub(env, arg)


def script_env(p: CommandParams, job: JobFile, script_hb: Path) -> dict[str, str]:
    env = dict(os.environ, SL_HEARTBEAT_FILE=str(script_hb), SL_JOB_DIR=job.job_dir)
    # The script sees the researcher's own environment, not the launcher's: its `python` is theirs
    # (with their transformers), and the launcher's packages do not shadow their modules. bin/_bootstrap
    # keeps the caller's PATH; started some other way (python -m launcher), there is none to restore.
    if "SL_USER_PATH" in env:
        env["PATH"] = env["SL_USER_PATH"]
        if env.get("SL_USER_PYTHONPATH"):
            env["PYTHONPATH"] = env["SL_USER_PYTHONPATH"]
        else:
            env.pop("PYTHONPATH", None)
    # A Python script's print() into our pipe is block-buffered: its progress (and bin/logs -f)
    # would come in 8 KiB lumps, behind the checkpoints it already saved.
    env.setdefault("PYTHONUNBUFFERED", "1")
    if p.launcher == "single":   # one process for the node: its own launcher numbers the workers
        for k in RANK_VARS:
            env.pop(k, None)
        env.update(NNODES=str(job.resources.nodes), NPROC_PER_NODE=str(job.resources.gpus_per_node))
    return env


def build_argv(p: CommandParams, job: JobFile, rank: int) -> list[str]:
    names = placeholders(job, rank)
    argv = [_fill(a, names) for a in p.argv]
    ck = job.checkpoint
    if ck.glob and ck.resume_arg:
        src = command_ckpt.resume_source(job.resume_from, Path(job.job_dir), ck.glob, ck.complete)
        if src is not None:
            argv += [a.replace("{checkpoint}", str(src)).replace("{dir}", job.job_dir) for a in ck.resume_arg]
    return argv


class _Output(threading.Thread):
    """Copies the script's output to ours (the rank log) and feeds the parser, line by line."""

    def __init__(self, stream, parser: ProgressParser):   # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.stream, self.parser, self.bytes, self.lock = stream, parser, 0, threading.Lock()

    def run(self) -> None:
        rest = ""
        out = getattr(sys.stdout, "buffer", None)   # the rank log; bytes as they came
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode   # a character split across reads
        while chunk := self.stream.read1(65536):
            text = decode(chunk)
            if out is not None:
                out.write(chunk)
            else:
                sys.stdout.write(text)
            sys.stdout.flush()
            done, rest = lines(rest + text)
            with self.lock:
                self.bytes += len(chunk)
                for line in done:
                    self.parser.feed(line)
        if rest:
            with self.lock:
                self.parser.feed(rest)


def _tree_cpu(pid: int) -> float | None:
    total = 0.0
    try:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        return None
    return total


class _Gpu:
    """GPU memory and utilisation of the script's processes, from NVML; None where there is no NVML."""

    def __init__(self, nvml=None) -> None:   # type: ignore[no-untyped-def]
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            self.nvml = nvml
            self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except Exception:   # noqa: BLE001 - no driver, no library, no GPU: the signal is simply absent
            self.nvml, self.handles = None, []

    def read(self, pids: set[int]) -> tuple[int, int] | None:
        if self.nvml is None:
            return None
        mem = util = 0
        for h in self.handles:
            try:
                procs = [p for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid in pids]
            except Exception:   # noqa: BLE001 - one device that cannot be read does not stop the others
                continue
            if procs:
                mem += sum(p.usedGpuMemory or 0 for p in procs) >> 20
                try:   # the device's, not the script's alone: a neighbour's kernels move it too
                    util += self.nvml.nvmlDeviceGetUtilizationRates(h).gpu
                except Exception:   # noqa: BLE001 - utilisation not supported (MIG): memory still counts
                    pass
        return mem, util


def _watch(child: subprocess.Popen, out: _Output, act: Activity, job: JobFile, jd: JobDir, rank: int,
           script_hb: Path, beat: Callable[[float], None]) -> None:
    """Until the script exits: once a second, every signal read, the heartbeat written, and (rank 0)
    its whole checkpoints mirrored for the launcher."""
    me, gpu, last = psutil.Process(), _Gpu(), time.time()
    while child.poll() is None:
        try:
            child.wait(timeout=SAMPLE_S)   # an exit is seen at once, not at the next sample
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.time()
        with out.lock:
            readings: dict[str, object] = {"progress": (out.parser.step, out.parser.units), "output": out.bytes}
        readings["files"] = files_fingerprint(jd.root)
        readings["cpu"] = _tree_cpu(child.pid)
        readings["gpu"] = gpu.read({c.pid for c in me.children(recursive=True)})
        readings["heartbeat"] = script_hb.stat().st_mtime_ns if script_hb.exists() else None
        act.update(now, readings, now - last)
        last = now
        if rank == 0 and job.checkpoint.glob:
            command_ckpt.mirror(jd.checkpoints, command_ckpt.script_checkpoints(jd.root, job.checkpoint.glob,
                                                                              job.checkpoint.complete))
        beat(now)


def run(job: JobFile) -> int:
    p = CommandParams.model_validate(job.params)
    rank = int(os.environ.get("RANK", "0"))
    jd = JobDir(Path(job.job_dir))
    hb_path = jd.heartbeat(rank)
    script_hb = hb_path.with_name(f"script-{hb_path.name}")   # the script's own, if it writes one
    parser = ProgressParser(p.progress)
    argv = build_argv(p, job, rank)
    print(f"[command] rank {rank} attempt {job.attempt}: {argv} in {p.cwd}", flush=True)

    def beat(phase: heartbeat.Phase, act: Activity | None, now: float) -> None:
        own = heartbeat.read(script_hb) if "heartbeat" in p.signals else None
        step = own.step if own else parser.step
        if phase == "training" and act is not None and act.ticks and step <= 0:
            step = 1   # working, but its output gives no step: out of start-up, judged by its activity
        heartbeat.write(hb_path, heartbeat.Heartbeat(
            rank=rank, step=step, total_steps=(own.total_steps if own else parser.total) or 0,
            phase=own.phase if own and phase == "training" else phase, pid=os.getpid(),
            loss=own.loss if own else parser.loss, attempt=job.attempt, progress=act.ticks if act else 0,
            signals=act.idle(now) if act else None, counts_steps=bool(own) or parser.bars_moving))

    beat("loading", None, time.time())
    env = script_env(p, job, script_hb)
    try:
        child = subprocess.Popen(argv, cwd=p.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 preexec_fn=_die_with_parent)
    except OSError as e:   # no such program, not executable: the plan said something this node cannot run
        print(f"[command] cannot start {argv[0]!r} in {p.cwd}: {e}", file=sys.stderr, flush=True)
        return 127
    out = _Output(child.stdout, parser)
    out.start()
    act = Activity(tuple(p.signals), time.time(), p.cpu_floor)
    # TERM reaches the script through the process group; this wrapper outlives it so the script can
    # save on TERM (its exit code is then the rank's), and the host's KILL after the grace ends both.
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        _watch(child, out, act, job, jd, rank, script_hb, lambda now: beat("training", act, now))
    finally:
        signal.signal(signal.SIGTERM, before)
    out.join(timeout=10)
    code = child.returncode if child.returncode >= 0 else 128 - child.returncode   # killed by a signal: 128 + n
    if rank == 0 and job.checkpoint.glob:
        command_ckpt.mirror(jd.checkpoints, command_ckpt.script_checkpoints(jd.root, job.checkpoint.glob,
                                                                          job.checkpoint.complete))
    if code != 0:
        print(f"[command] rank {rank}: {argv[0]} exited {code}", file=sys.stderr, flush=True)
        return code
    if rank == 0:
        metrics = {"steps": parser.step} | ({"final_loss": parser.loss} if parser.loss is not None else {})
        write_result(jd.result, Result("succeeded", metrics, extra={"argv": argv}))
    beat("done", act, time.time())
    return 0
