"""The real pretrained model shipped as GGUF (SmolLM2-135M-Instruct): conversion cache and a short SFT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, DataSource, ModelSpec, Resources
from tests.helpers import DATA, REPO, deepspeed_config, run_ranks, tiny_training, write_job_file

pytestmark = pytest.mark.integration

CONVERT = "from methods.models import converted_gguf, resolve_gguf; print(converted_gguf(resolve_gguf('smollm2')))"


def _convert(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "SL_MODEL_CACHE": str(cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CONVERT], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory) -> Path:
    """Two processes ask at once on an empty cache (ranks on first use): one converts, both get it."""
    cache = tmp_path_factory.mktemp("model-cache")
    start = time.monotonic()
    procs = [_convert(cache), _convert(cache)]
    outs = [p.communicate(timeout=300) for p in procs]
    print(f"two racing GGUF conversions: {time.monotonic() - start:.1f} s")
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    return cache


def test_conversion_race_leaves_one_complete_copy(gguf_cache):
    # The converted copy and its lock file (kept: deleting a lock another process may hold is a race).
    names = {p.name for p in gguf_cache.iterdir()}
    entries = sorted(n for n in names if not n.endswith(".lock"))
    assert len(entries) == 1 and entries[0].startswith("gguf-SmolLM2-135M-Instruct.Q4_1-")  # no temp dirs left
    assert names - set(entries) == {f".{entries[0]}.lock"}
    converted = gguf_cache / entries[0]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in converted.iterdir()}
    start = time.monotonic()
    p = _convert(gguf_cache)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str(converted)
    print(f"cached lookup in a fresh process: {time.monotonic() - start:.1f} s")


def test_sft_on_smollm2_two_ranks(gguf_cache, tmp_path):
    """2 steps of ZeRO-2 SFT on the real instruct model, chat template chosen by `auto`."""
    training = tiny_training(batch_size=1, max_steps=2, max_length=96)
    job_file = write_job_file(
        tmp_path, model=ModelSpec(gguf="smollm2"), params={"template": "auto"}, training=training,
        deepspeed=deepspeed_config("zero2", training, 2), checkpoint=CheckpointSpec(every=2, keep=2),
        data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=4)}, resources=Resources(gpus_per_node=2))
    run = run_ranks(job_file, 2, timeout=300, extra_env={"SL_MODEL_CACHE": str(gguf_cache)})
    print(f"SmolLM2 SFT (2 ranks, ZeRO-2, 2 steps): {run.wall_s:.1f} s")
    assert run.codes == [0, 0], run.tail()
    jd = JobDir(tmp_path)
    result = json.loads(jd.result.read_text())
    assert result["status"] == "succeeded" and result["metrics"]["global_step"] == 2
    # A pretrained instruct model predicts the short label far better than chance (ln 49152 = 10.8).
    assert result["metrics"]["train_loss"] < 8.0
    assert "template chat" in run.logs[0].read_text()
    assert (jd.adapter / "adapter_model.safetensors").is_file() and (jd.adapter / "chat_template.jinja").is_file()
