"""Atomic writes: a reader never sees half a JSON file; JSONL readers skip a torn last line."""

from __future__ import annotations

import json
import os
import threading

import pytest

from launcher import atomic


def _doc(i: int) -> dict:
    # ~400 kB, so a non-atomic rewrite would be caught half-written by a polling reader.
    return {"version": i, "rows": [{"id": j, "text": "x" * 90, "v": i} for j in range(3000)]}


def test_write_json_never_exposes_a_half_written_file(tmp_path):
    path = tmp_path / "state.json"
    atomic.write_json(path, _doc(0))
    stop = threading.Event()
    seen: list[int] = []
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = path.read_text()
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                bad.append(f"{len(text)} bytes: {e}")
                continue
            if len(doc["rows"]) != 3000 or any(r["v"] != doc["version"] for r in doc["rows"][::97]):
                bad.append(f"mixed document, version {doc['version']}")
            seen.append(doc["version"])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 21):
            atomic.write_json(path, _doc(i))
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert len(seen) >= 10, "the reader should have polled while the writer was rewriting"
    assert seen == sorted(seen)                     # versions only move forward
    assert atomic.read_json(path)["version"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]   # no temp files left


def test_write_json_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic.write_json(path, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic.write_json(path, {"v": 2})
    monkeypatch.undo()
    assert atomic.read_json(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_write_creates_parent_dirs_and_read_json_default(tmp_path):
    path = tmp_path / "x" / "y" / "z.json"
    assert atomic.read_json(path) is None
    assert atomic.read_json(path, default={}) == {}
    atomic.write_json(path, {"b": 1, "a": [1, 2]})
    assert atomic.read_json(path) == {"a": [1, 2], "b": 1}
    assert path.read_text().endswith("\n")
    atomic.write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text() == "héllo"


def test_read_jsonl_skips_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic.append_jsonl(path, {"step": 1, "loss": 0.5})
    atomic.append_jsonl(path, {"step": 2, "loss": 0.25})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')             # a writer caught mid-line
    assert atomic.read_jsonl(path) == [{"loss": 0.5, "step": 1}, {"loss": 0.25, "step": 2}]
    with open(path, "a") as f:
        f.write('ss": 0.125}\n')              # ... and the line completed
    assert [r["step"] for r in atomic.read_jsonl(path)] == [1, 2, 3]


def test_read_jsonl_missing_file_is_empty(tmp_path):
    assert atomic.read_jsonl(tmp_path / "nope.jsonl") == []


def test_append_jsonl_concurrent_writers_give_whole_lines(tmp_path):
    path = tmp_path / "log.jsonl"

    def writer(w: int) -> None:
        for i in range(200):
            atomic.append_jsonl(path, {"w": w, "i": i, "pad": "p" * 200})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    rows = [json.loads(line) for line in lines]           # every line parses: no interleaving
    for w in range(4):
        assert [r["i"] for r in rows if r["w"] == w] == list(range(200))
    assert os.stat(path).st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
