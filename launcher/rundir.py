"""Creating a run directory and the per-attempt job files the ranks read."""

from __future__ import annotations

import copy
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from launcher import atomic, pathcheck
from launcher.layout import OUTPUTS, RunDir
from launcher.plan import REF_RE, Job, Plan
from launcher.spec import DataSource, JobFile
from methods.registry import METHODS

# TOKEN only as a whole word part (HF_TOKEN, hfToken, token): `tokenizer` or `max_new_tokens` are not secrets.
SECRET_KEY_RE = re.compile(r"TOKEN(?![A-Z])|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|CREDENTIAL", re.I)
ENV_REF_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
REDACTED = "***"


def new_run_id(plan: Plan) -> str:
    return f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _secret_value(key: Any, value: Any) -> bool:
    """A value to hide: under a secret-looking key, and not just a ${env:NAME} reference (a name is
    no secret, and keeping it lets bin/resume take the secret from the environment again)."""
    if not (isinstance(key, str) and SECRET_KEY_RE.search(key)) or value in (None, ""):
        return False
    return not (isinstance(value, str) and ENV_REF_RE.fullmatch(value.strip()))


def redact(obj: Any) -> Any:
    """Replace values of secret-looking keys (HF_TOKEN, ...) anywhere in a nested structure."""
    if isinstance(obj, dict):
        return {k: (REDACTED if _secret_value(k, v) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def job_env(job: Job, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The job's env block with ${env:NAME} taken from the driver's environment (how tokens get in
    without being written in a plan). Raises KeyError naming a missing variable."""
    environ = os.environ if environ is None else environ
    out = {}
    for k, v in job.config.env.items():
        if v == REDACTED:   # bin/resume of a plan that held the secret itself: the copy kept no value
            raise KeyError(f"jobs.{job.base}.env.{k}: the run's plan.yaml keeps secrets redacted; write it as "
                           f"\"${{env:{k}}}\" in the plan and set {k} in the environment, so every (re)start reads it")
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in environ:
                raise KeyError(f"jobs.{job.base}.env.{k}: environment variable {m.group(1)} is not set")
            return environ[m.group(1)]
        out[k] = ENV_REF_RE.sub(sub, str(v))
    return out


def create(plan: Plan, runs_root: Path, run_id: str | None = None) -> RunDir:
    run_id = run_id or new_run_id(plan)
    rd = RunDir((runs_root / run_id).resolve())
    # A detached launch pre-creates the directory for its output log; a started run is never reused.
    if rd.plan.exists() or rd.db.exists():
        raise FileExistsError(f"run directory {rd.root} already holds a run")
    (rd.root / "jobs").mkdir(parents=True, exist_ok=True)
    atomic.write_text(rd.plan, yaml.safe_dump(redact(copy.deepcopy(plan.raw)), sort_keys=False))
    return rd


def fill_refs(s: str, rd: RunDir) -> str:
    return REF_RE.sub(lambda m: str(OUTPUTS[m.group(2)](rd.job(m.group(1)))), s)


def job_file(plan: Plan, job: Job, rd: RunDir, attempt: int, resume_from: str | None) -> JobFile:
    model = job.config.model.model_copy() if job.config.model else None
    if model is not None:
        for k in ("path", "gguf", "adapter", "tokenizer"):
            v = getattr(model, k)
            if v:
                setattr(model, k, fill_refs(v, rd))
    data = {r: DataSource(**{**d.model_dump(), "source": fill_refs(d.source, rd)}) for r, d in job.data.items()}
    params = job.method_params
    for key in METHODS[job.config.method].ref_params:
        params = {**params, key: [fill_refs(a, rd) for a in params[key]]}
    return JobFile(run_id=rd.root.name, job=job.name, method=job.config.method, params=params, model=model,
                   data=data, training=job.config.training, deepspeed=job.ds_config, checkpoint=job.config.checkpoint,
                   resources=job.config.resources, job_dir=str(rd.job(job.name).root), attempt=attempt,
                   resume_from=resume_from, upstream={u: str(rd.job(u).root) for u in job.needs})


def write_job_file(jf: JobFile, rd: RunDir) -> Path:
    path = rd.job(jf.job).job_file(jf.attempt)
    atomic.write_text(path, jf.model_dump_json(indent=2))
    return path


def find_run(runs_root: Path, run: str | None) -> RunDir:
    """A run by id or path; without one, the newest run under runs_root."""
    if run:
        for cand in (Path(run), runs_root / run):
            if pathcheck.exists(cand / "run.db"):   # a name the OS refuses (too long) is no run either
                return RunDir(cand.resolve())
        raise FileNotFoundError(f"no run {pathcheck.clip(run, 300)} (looked in {runs_root}; pass a run id or a run directory)")
    runs = [p.parent for p in runs_root.glob("*/run.db")] if pathcheck.is_dir(runs_root) else []
    if not runs:
        raise FileNotFoundError(f"no runs under {runs_root}")
    # plan.yaml is written once, at creation: its mtime orders runs by when they started.
    return RunDir(max(runs, key=lambda d: (d / "plan.yaml").stat().st_mtime).resolve())


RESERVE_BYTES = 8 << 20   # enough to close a journal: a few hundred rows and their rollback journal


def make_reserve(rd: RunDir) -> None:
    """Hold disk space for the journal's last writes; on a full disk it is all there is."""
    try:
        fd = os.open(rd.reserve, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)   # real blocks: a sparse file would free nothing
        finally:
            os.close(fd)
    except OSError:
        rd.reserve.unlink(missing_ok=True)   # already short of space: the run goes on without one


def free_reserve(rd: RunDir) -> None:
    rd.reserve.unlink(missing_ok=True)
