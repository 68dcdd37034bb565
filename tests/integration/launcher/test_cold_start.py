"""The first use of the launcher on a machine that never ran it, as a newcomer meets it: `bin/launch`
with an empty HOME (no model cache, no torch extensions, no Ray token), and a two-rank DeepSpeed job
on the real GGUF model as the very first thing. Then the same command again, warm, after a build
of DeepSpeed's op was killed and left its lock file behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from launcher.atomic import read_json
from methods.model_cache import MARKER
from tests.helpers import DATA, REPO
from tests.integration.launcher.conftest import status

pytestmark = pytest.mark.integration

PLAN = f"""
name: coldstart
jobs:
  first:
    method: sft
    model: {{gguf: smollm2}}
    params: {{template: auto}}
    data: {{train: {DATA / "safe_mini.jsonl"}}}
    deepspeed: zero2
    resources: {{nodes: 1, gpus_per_node: 2}}
    checkpoint: {{every: 2, keep: 2}}
    training: {{max_steps: 2, batch_size: 1, max_length: 64, logging_steps: 1}}
"""
# Every cache the project or its libraries keep under HOME, or point elsewhere by variable.
CACHE_VARS = ("SL_MODEL_CACHE", "TORCH_EXTENSIONS_DIR", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE",
              "TRANSFORMERS_CACHE", "RAY_TMPDIR", "TMPDIR")


def _launch(plan: Path, runs: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    out = subprocess.run([str(REPO / "bin" / "launch"), str(plan), "--runs-dir", str(runs)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1200)
    return out, time.monotonic() - start


def _rank_logs(runs: Path, run_dir: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((Path(run_dir) / "jobs" / "first" / "logs").rglob("rank-*.log")))


def test_first_command_on_a_cold_machine_then_warm_after_a_killed_build(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # Ray's socket paths must stay short (108 bytes): its temp dir is made directly under /tmp.
    ray_tmp = Path(tempfile.mkdtemp(prefix="sl-ray-", dir="/tmp"))
    try:
        _cold_then_warm(tmp_path, home, ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _cold_then_warm(tmp_path: Path, home: Path, ray_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
    env.update(HOME=str(home), RAY_TMPDIR=str(ray_tmp))
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    runs = tmp_path / "runs"

    cold, cold_s = _launch(plan, runs, env)
    assert cold.returncode == 0, cold.stdout[-4000:] + cold.stderr[-4000:]
    st = status(runs)
    assert st["state"] == "succeeded" and st["jobs"][0]["restarts"] == 0   # no restart needed
    logs = _rank_logs(runs, st["dir"])
    assert logs.count("model cache: converting") == 1          # one rank converted, the other waited
    (entry,) = (home / ".cache" / "safety-launcher").glob("gguf-*[!k]")
    assert read_json(entry / MARKER)["files"]["config.json"] > 0
    (op_dir,) = (home / ".cache" / "torch_extensions").glob("*/deepspeed_shm_comm")
    assert list(op_dir.glob("*.so")) and "DeepSpeed op deepspeed_shm_comm ready" in logs

    # A build killed half-way leaves torch's baton; without the sweep every later rank would wait on it.
    (op_dir / "lock").write_text("")
    warm, warm_s = _launch(plan, runs, env)
    assert warm.returncode == 0, warm.stdout[-4000:] + warm.stderr[-4000:]
    st2 = status(runs, warm.stdout.split()[1])
    assert st2["state"] == "succeeded"
    logs2 = _rank_logs(runs, st2["dir"])
    assert logs2.count("removing") == 1 and f"{op_dir / 'lock'}, left by a build that was killed" in logs2
    assert "model cache: converting" not in logs2 and not (op_dir / "lock").exists()
    print(f"bin/launch, 2-rank ZeRO-2 SFT on SmolLM2: cold {cold_s:.0f} s, warm {warm_s:.0f} s")
