"""Model cache entries: complete only with a marker that agrees with the disk; the conversion child
refuses a distributed environment."""

from __future__ import annotations

import os
from pathlib import Path


from methods import model_cache
from methods.model_cache import MARKER, content_problem, entry_problem, write_marker


def _hf_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    for name, data in {"config.json": b"{}", "model.safetensors": b"w" * 64, "tokenizer.json": b"{}",
                       "tokenizer_config.json": b"{}"}.items():
        (path / name).write_bytes(data)
    return path


def test_complete_only_with_a_marker_that_matches(tmp_path):
    entry = _hf_dir(tmp_path / "e")
    assert entry_problem(tmp_path / "absent") == "absent"
    assert "no valid COMPLETE.json" in entry_problem(entry)
    write_marker(entry, Path("/x.gguf"))
    assert entry_problem(entry) is None
    (entry / "model.safetensors").write_bytes(b"w" * 10)          # truncated after the marker
    assert entry_problem(entry) == "model.safetensors has 10 bytes, the marker says 64"
    (entry / "model.safetensors").unlink()
    assert entry_problem(entry) == "model.safetensors is missing"
    for torn in ("{not json", "[]"):   # never taken for complete, never a crash at every load
        (entry / MARKER).write_text(torn)
        assert "no valid COMPLETE.json" in entry_problem(entry)


def test_content_problem_names_what_a_conversion_left_out(tmp_path):
    tokenizer_only = tmp_path / "t"
    tokenizer_only.mkdir()
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json"):
        (tokenizer_only / name).write_text("{}")
    assert content_problem(tokenizer_only) == "missing config.json, *.safetensors (the weights)"
    assert content_problem(_hf_dir(tmp_path / "full")) is None


def test_cache_root_is_read_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("SL_MODEL_CACHE", str(tmp_path / "c"))
    assert model_cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SL_MODEL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache.cache_root() == tmp_path / "home" / ".cache" / "safety-launcher"


def test_conversion_child_runs_outside_any_process_group(monkeypatch, capsys):
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    env = model_cache.conversion_env()
    assert not set(model_cache.DISTRIBUTED_ENV) & set(env) and env["PATH"] == os.environ["PATH"]
    assert model_cache.main(["a.gguf", "out"]) == 2
    assert "refusing to convert with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR set" in capsys.readouterr().err
