"""Experiment tracking (training.report_to): one TensorBoard / W&B / MLflow run per job, continued
by every attempt, grouped by the launcher run id, plus the launcher's own series.

The HF Trainer's integrations do the writing (report_to, run_name and their environment
variables); this module only derives that configuration from the job, and adds two things they
lack: TensorBoard's purge on resume (a restarted attempt replaces what the crashed one logged past
its checkpoint instead of doubling those steps) and the launcher series (attempt, restarts, phase,
peak memory), sent through the same reporters.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, MutableMapping

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

from launcher.contract import JobDir, JobFile
from methods.core.callbacks import HeartbeatCallback

# Which package each tracker needs in the rank's environment (pip install safety-launcher[tracking]).
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
PHASES = {"loading": 0, "training": 1, "evaluating": 2, "saving": 3, "done": 4}
REPORTERS = (TensorBoardCallback, WandbCallback, MLflowCallback)
MLFLOW_JOB_TAG, MLFLOW_RUN_TAG = "launcher.job", "launcher.run_id"


@dataclass(frozen=True)
class TrackingEnv:
    """Environment of a rank's trackers. `forced` is the tracking run's identity (always ours: an id
    inherited from the caller's shell would merge two jobs); `defaults` is where and how (mode,
    store, project), which the plan's `env:` may set otherwise, e.g. WANDB_MODE=online."""

    forced: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)


def wandb_run_id(run_id: str, job: str) -> str:
    """A W&B run id that is the same for every attempt of one job of one launcher run: readable (the
    job name) and unique (a hash of both names), within W&B's 64 characters and character set."""
    digest = hashlib.sha256(f"{run_id}\0{job}".encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '-', job)[:48]}-{digest}"


def tracking_env(trackers: list[str], run_id: str, job: str, method: str, jd: JobDir, attempt: int) -> TrackingEnv:
    forced: dict[str, str] = {}
    defaults: dict[str, str] = {}
    if "tensorboard" in trackers:
        forced["TENSORBOARD_LOGGING_DIR"] = str(jd.tb)
    if "wandb" in trackers:
        forced |= {"WANDB_RUN_ID": wandb_run_id(run_id, job), "WANDB_RESUME": "allow", "WANDB_RUN_GROUP": run_id,
                   "WANDB_JOB_TYPE": method}
        # Offline by default: no network here, and `wandb sync jobs/<job>/wandb/offline-run-*` uploads later.
        # Console capture off: the rank log is the launcher's, and W&B's wrapper would duplicate it.
        defaults |= {"WANDB_MODE": "offline", "WANDB_DIR": str(jd.root), "WANDB_PROJECT": "safety-launcher",
                     "WANDB_CONSOLE": "off"}
    if "mlflow" in trackers:
        forced["MLFLOW_TAGS"] = json.dumps({MLFLOW_RUN_TAG: run_id, MLFLOW_JOB_TAG: job, "launcher.method": method,
                                            "launcher.attempt": str(attempt)})
        if attempt > 1:
            # The first attempt logged the arguments; MLflow refuses a changed param value, and a
            # restart after an OOM runs with a smaller micro-batch.
            forced["MLFLOW_MAX_LOG_PARAMS"] = "0"
        # MLflow 3 refuses its file store unless allowed: its SQL store needs the full mlflow (a server's
        # dependencies), where the file store works with mlflow-skinny.
        defaults |= {"MLFLOW_TRACKING_URI": (jd.root / "mlruns").as_uri(), "MLFLOW_EXPERIMENT_NAME": run_id,
                     "MLFLOW_ALLOW_FILE_STORE": "true"}
    return TrackingEnv(forced, defaults)


# What apply_env set in this process: a later job in the same process (tests) may replace it,
# where a value from the plan's env or the caller's shell is kept.
_applied: dict[str, str] = {}


def apply_env(env: TrackingEnv, environ: MutableMapping[str, str] = os.environ) -> None:
    for key, value in env.defaults.items():
        if key not in environ or environ[key] == _applied.get(key):
            environ[key] = _applied[key] = value
    for key, value in env.forced.items():
        environ[key] = _applied[key] = value


def missing_packages(trackers: list[str]) -> list[str]:
    return [PACKAGES[t] for t in trackers if importlib.util.find_spec(PACKAGES[t]) is None]


def mlflow_run(tracking_uri: str, experiment: str, run_id: str, job: str, tags: dict[str, str]) -> str:
    """The MLflow run of this job: found by its tags, or created by the first attempt. MLflow picks run
    ids itself, so a restart finds it again instead of deriving it; MLFLOW_RUN_ID then resumes it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    # Job names are letters, digits and _ . = - (launcher.plan), safe inside the quotes; the run id
    # is compared here rather than quoted into the filter.
    for run in client.search_runs([exp_id], filter_string=f"tags.`{MLFLOW_JOB_TAG}` = '{job}'"):
        if run.data.tags.get(MLFLOW_RUN_TAG) == run_id:
            return run.info.run_id
    return client.create_run(exp_id, run_name=job, tags=tags).info.run_id


def prepare(job: JobFile, rank: int) -> list[str]:
    """Set this rank's tracking environment and return TrainingArguments.report_to. Rank 0 alone
    reports (the HF integrations check is_world_process_zero), so only it looks up the MLflow run."""
    trackers = list(job.training.report_to)
    missing = missing_packages(trackers)
    if missing:
        raise RuntimeError(f"training.report_to {trackers}: {', '.join(missing)} not installed in the rank's "
                           f"environment (pip install 'safety-launcher[tracking]')")
    env = tracking_env(trackers, job.run_id, job.job, job.method, JobDir(Path(job.job_dir)), job.attempt)
    apply_env(env)
    if "mlflow" in trackers and rank == 0:
        tags = json.loads(env.forced["MLFLOW_TAGS"])
        os.environ["MLFLOW_RUN_ID"] = _applied["MLFLOW_RUN_ID"] = mlflow_run(
            os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_EXPERIMENT_NAME"], job.run_id, job.job, tags)
    return trackers


class ResumingTensorBoardCallback(TensorBoardCallback):
    """HF's TensorBoard callback whose writer purges, at a resumed attempt's first step, what earlier
    attempts logged from there on: EventAccumulator (and TensorBoard) then show one curve through the
    restart, the crashed attempt's steps past its checkpoint replaced by the resumed ones."""

    purge_step: int | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.purge_step = state.global_step + 1   # the resumed checkpoint's state is loaded by now
        super().on_train_begin(args, state, control, **kw)

    def _init_summary_writer(self, args: TrainingArguments) -> None:
        self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)


def launcher_series(hb: HeartbeatCallback) -> dict[str, float]:
    """The launcher's own series at one log step, from this rank's heartbeat: attempt, restarts, the
    phase that follows the step (1 training, 2 evaluating, 3 saving) and the peaks so far (MiB)."""
    h = hb.hb
    series: dict[str, float] = {"launcher/attempt": h.attempt, "launcher/restarts": h.attempt - 1,
                                "launcher/phase": PHASES[h.phase]}
    for key in ("torch_max_allocated_mib", "torch_max_reserved_mib", "rss_hwm_mib"):
        value = getattr(h, key)
        if value is not None:
            series[f"launcher/{key}"] = float(value)
    return series


class LauncherSeriesCallback(TrainerCallback):
    """After the reporters have logged a step, hands them the launcher series for the same step (the
    same on_log they got the Trainer's logs through; they add their usual `train/` prefix)."""

    def __init__(self, reporters: list[TrainerCallback], heartbeat: HeartbeatCallback):
        self.reporters, self.heartbeat = reporters, heartbeat

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kw: Any):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return   # training steps only: evaluation and the end-of-training summary are logs too
        series = launcher_series(self.heartbeat)
        for reporter in self.reporters:
            reporter.on_log(args, state, control, logs=dict(series), **kw)


def install(trainer: Trainer) -> None:
    """Swap HF's TensorBoard callback for the resuming one and add the launcher series. A no-op for
    report_to none and for trainers without a heartbeat (unit tests of a bare Trainer)."""
    callbacks = trainer.callback_handler.callbacks
    for i, cb in enumerate(callbacks):
        if type(cb) is TensorBoardCallback:
            callbacks[i] = ResumingTensorBoardCallback()   # reads TENSORBOARD_LOGGING_DIR as HF's does
    reporters = [cb for cb in callbacks if isinstance(cb, REPORTERS)]
    heartbeat = next((cb for cb in callbacks if isinstance(cb, HeartbeatCallback)), None)
    if reporters and heartbeat is not None:
        trainer.add_callback(LauncherSeriesCallback(reporters, heartbeat))
