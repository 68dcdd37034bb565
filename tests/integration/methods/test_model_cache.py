"""The node's model cache on the real pretrained model shipped as GGUF (SmolLM2-135M-Instruct):
conversion inside a process group, healing a broken entry, jobs converting at once, a short SFT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, DataSource, ModelSpec, Resources
from methods.model_cache import MARKER, entry_problem, gguf_cache_dir, smollm2_gguf
from tests.helpers import DATA, REPO, deepspeed_config, free_port, run_ranks, tiny_training, write_job_file

pytestmark = pytest.mark.integration

# A rank of a real gloo group: rank 1 asks for the model first while rank 0 waits at a barrier, the
# order that made transformers write a tokenizer-only directory (issue 10); then rank 0 asks.
IN_GROUP = """
import json, logging, os, torch.distributed as dist
logging.basicConfig(level=logging.INFO)
from methods.model_cache import converted_gguf, entry_problem, resolve_gguf
dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == 1:
    path = converted_gguf(resolve_gguf("smollm2"))
dist.barrier()
if rank == 0:
    path = converted_gguf(resolve_gguf("smollm2"))
dist.barrier()
print(json.dumps({"rank": rank, "path": str(path), "files": sorted(os.listdir(path)), "problem": entry_problem(path)}))
"""
# A process of its own (a job on the same node): asks for the model and prints where it is.
STANDALONE = ("import logging; logging.basicConfig(level=logging.INFO)\n"
              "from methods.model_cache import converted_gguf, resolve_gguf; print(converted_gguf(resolve_gguf('smollm2')))")


def _env(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SL_MODEL_CACHE": str(cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def _python(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory) -> Path:
    """An empty cache met first by rank 1 of a two-rank gloo group: both ranks end with a complete model."""
    cache = tmp_path_factory.mktemp("model-cache")
    port, start = str(free_port()), time.monotonic()
    procs = [_python(IN_GROUP, _env(cache, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in (0, 1)]
    outs = [p.communicate(timeout=400) for p in procs]
    print(f"conversion by rank 1 of a gloo group: {time.monotonic() - start:.1f} s")
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert seen[0]["path"] == seen[1]["path"]
    for s in seen:
        assert s["problem"] is None, s
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER} <= set(s["files"])
    # Rank 1 converted (rank 0 found its copy), and said so in its log.
    assert "converting" in outs[1][1] and "converting" not in outs[0][1]
    return cache


def test_conversion_leaves_one_complete_copy(gguf_cache):
    # The converted copy and its lock file (kept: deleting a lock another process may hold is a race).
    names = {p.name for p in gguf_cache.iterdir()}
    entries = sorted(n for n in names if not n.endswith(".lock"))
    assert len(entries) == 1 and entries[0].startswith("gguf-SmolLM2-135M-Instruct.Q4_1-")  # no temp dirs left
    assert names - set(entries) == {f".{entries[0]}.lock"}
    converted = gguf_cache / entries[0]
    marker = json.loads((converted / MARKER).read_text())
    assert marker["files"]["model.safetensors"] == (converted / "model.safetensors").stat().st_size > 100_000_000
    start = time.monotonic()
    p = _python(STANDALONE, _env(gguf_cache))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str(converted) and "converting" not in err
    print(f"cached lookup in a fresh process: {time.monotonic() - start:.1f} s")


def test_tokenizer_only_entry_is_rebuilt_once_by_two_jobs_at_once(gguf_cache, tmp_path):
    """What the old rank-1 conversion left (tokenizer files, no config, no weights, no marker), met by
    two jobs at once: one logs the rebuild and converts, the other waits and loads its copy."""
    good = gguf_cache_dir(smollm2_gguf()).name
    cache = tmp_path / "cache"
    planted = cache / good
    planted.mkdir(parents=True)
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(gguf_cache / good / name, planted / name)
    # A conversion killed half-way leaves its temp directory too.
    (cache / f".{good}.killed").mkdir()
    (cache / f".{good}.killed" / "model.safetensors").write_bytes(b"partial")
    assert entry_problem(planted) is not None

    procs = [_python(STANDALONE, _env(cache)) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    assert {out.strip().splitlines()[-1] for out, _ in outs} == {str(planted)}
    logs = "".join(err for _, err in outs)
    assert logs.count("is not usable (no valid COMPLETE.json") == 1 and logs.count("model cache: converting") == 1
    assert entry_problem(planted) is None
    assert {p.name for p in cache.iterdir()} == {good, f".{good}.lock"}   # the killed temp dir is gone


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
