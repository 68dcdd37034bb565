"""Tracking: the environment derived from training.report_to, the run id, the job and the attempt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.heartbeat import Heartbeat
from launcher.layout import JobDir
from launcher.spec import TrainingSpec
from methods import tracking
from methods.core.callbacks import HeartbeatCallback

JD = JobDir(Path("/runs/r1/jobs/sft"))


def test_report_to_defaults_to_tensorboard_and_accepts_none_and_shorthands():
    assert TrainingSpec().report_to == ["tensorboard"]
    assert TrainingSpec(report_to="none").report_to == []
    assert TrainingSpec(report_to=["none"]).report_to == []
    assert TrainingSpec(report_to="wandb").report_to == ["wandb"]
    assert TrainingSpec(report_to=["mlflow", "tensorboard", "mlflow"]).report_to == ["mlflow", "tensorboard"]
    for bad in ("comet", ["tensorboard", "none"], 3, [["wandb"]]):
        with pytest.raises(ValueError, match="expected a list of tensorboard, wandb, mlflow, or none"):
            TrainingSpec(report_to=bad)


def test_wandb_run_id_is_stable_per_job_and_run_and_fits_wandb():
    a = tracking.wandb_run_id("demo-20261122-200006-6eef", "sft_poison")
    assert a == tracking.wandb_run_id("demo-20261122-200006-6eef", "sft_poison")   # every attempt
    assert a.startswith("sft_poison-") and a != tracking.wandb_run_id("demo-20261122-200006-6eef", "lisa")
    assert a != tracking.wandb_run_id("demo-20261123-000000-aaaa", "sft_poison")     # another launcher run
    long = tracking.wandb_run_id("r" * 255, "j" * 200)
    assert len(long) <= 64 and set(long) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def test_tensorboard_only_by_default():
    env = tracking.tracking_env(["tensorboard"], "r1", "sft", "sft", JD, attempt=1)
    assert env.forced == {"TENSORBOARD_LOGGING_DIR": "/runs/r1/jobs/sft/tb"} and env.defaults == {}
    assert tracking.tracking_env([], "r1", "sft", "sft", JD, attempt=3) == tracking.TrackingEnv()


def test_wandb_resumes_one_run_per_job_grouped_by_run_offline_by_default():
    first = tracking.tracking_env(["wandb"], "r1", "sft", "sft", JD, attempt=1)
    again = tracking.tracking_env(["wandb"], "r1", "sft", "sft", JD, attempt=2)
    assert first == again
    assert first.forced == {"WANDB_RUN_ID": tracking.wandb_run_id("r1", "sft"), "WANDB_RESUME": "allow",
                            "WANDB_RUN_GROUP": "r1", "WANDB_JOB_TYPE": "sft"}
    assert first.defaults["WANDB_MODE"] == "offline" and first.defaults["WANDB_DIR"] == "/runs/r1/jobs/sft"


def test_mlflow_file_store_under_the_job_experiment_per_run_params_logged_once():
    first = tracking.tracking_env(["mlflow"], "r1", "sft", "lisa", JD, attempt=1)
    assert first.defaults == {"MLFLOW_TRACKING_URI": "file:///runs/r1/jobs/sft/mlruns", "MLFLOW_EXPERIMENT_NAME": "r1",
                              "MLFLOW_ALLOW_FILE_STORE": "true"}
    assert json.loads(first.forced["MLFLOW_TAGS"]) == {"launcher.run_id": "r1", "launcher.job": "sft",
                                                       "launcher.method": "lisa", "launcher.attempt": "1"}
    assert "MLFLOW_MAX_LOG_PARAMS" not in first.forced
    again = tracking.tracking_env(["mlflow"], "r1", "sft", "lisa", JD, attempt=2)
    assert again.forced["MLFLOW_MAX_LOG_PARAMS"] == "0"   # an OOM restart's smaller batch is no param clash


def test_apply_env_keeps_the_plans_settings_but_not_its_own_from_an_earlier_job():
    environ = {"WANDB_MODE": "online", "WANDB_RUN_ID": "from-my-shell"}
    tracking.apply_env(tracking.tracking_env(["wandb"], "r1", "a", "sft", JobDir(Path("/j/a")), 1), environ)
    assert environ["WANDB_MODE"] == "online"                       # the plan's env (or the shell) wins
    assert environ["WANDB_RUN_ID"] == tracking.wandb_run_id("r1", "a")   # identity is always ours
    assert environ["WANDB_DIR"] == "/j/a"
    tracking.apply_env(tracking.tracking_env(["wandb"], "r1", "b", "sft", JobDir(Path("/j/b")), 1), environ)
    assert environ["WANDB_DIR"] == "/j/b"                          # ours from job a: replaced
    assert environ["WANDB_MODE"] == "online"


def test_launcher_series_from_the_heartbeat(tmp_path):
    hb = HeartbeatCallback(tmp_path / "hb.json", rank=0, attempt=3)
    hb.hb = Heartbeat(rank=0, step=5, total_steps=9, phase="saving", attempt=3, rss_hwm_mib=812.5,
                      torch_max_allocated_mib=None, torch_max_reserved_mib=None)
    assert tracking.launcher_series(hb) == {"launcher/attempt": 3, "launcher/restarts": 2, "launcher/phase": 3,
                                            "launcher/rss_hwm_mib": 812.5}
    hb.hb.torch_max_allocated_mib, hb.hb.phase = 1024.0, "training"
    assert tracking.launcher_series(hb)["launcher/torch_max_allocated_mib"] == 1024.0
    assert tracking.launcher_series(hb)["launcher/phase"] == 1


def test_missing_tracker_packages_are_named():
    assert tracking.missing_packages(["tensorboard"]) == []
    assert tracking.missing_packages([]) == []
