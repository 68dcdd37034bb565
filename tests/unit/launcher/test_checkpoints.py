"""Checkpoints count only when complete; resume takes the newest complete one; pruning is safe."""

from __future__ import annotations

from pathlib import Path

from launcher import checkpoints as ck


def make(root: Path, step: int, complete: bool) -> Path:
    p = root / f"checkpoint-{step}"
    p.mkdir(parents=True)
    (p / "state.json").write_text(f'{{"step": {step}}}')
    if complete:
        ck.mark_complete(p, step, {"attempt": 1})
    return p


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_step_of_and_listing_ignores_other_entries(tmp_path):
    assert ck.step_of(Path("checkpoint-12")) == 12
    assert ck.step_of(Path("checkpoint-x")) is None
    assert ck.step_of(Path("ckpt-3")) is None
    make(tmp_path, 100, True)
    make(tmp_path, 20, True)
    make(tmp_path, 3, False)
    (tmp_path / "checkpoint-50").write_text("a file, not a dir")
    (tmp_path / "checkpoint-tmp").mkdir()
    assert names(ck.all_checkpoints(tmp_path)) == ["checkpoint-3", "checkpoint-20", "checkpoint-100"]  # numeric order
    assert names(ck.complete_checkpoints(tmp_path)) == ["checkpoint-20", "checkpoint-100"]
    assert ck.all_checkpoints(tmp_path / "missing") == []


def test_marker_content(tmp_path):
    p = make(tmp_path, 7, True)
    assert ck.is_complete(p)
    assert ck.marker(p) == {"step": 7, "attempt": 1, "files": ck.manifest(p)}
    assert ck.marker(make(tmp_path, 8, False)) is None


def test_latest_complete_ignores_dirs_without_marker(tmp_path):
    assert ck.latest_complete(tmp_path) is None
    make(tmp_path, 10, True)
    make(tmp_path, 20, True)
    make(tmp_path, 30, False)      # newest, but still being written (or died mid-save)
    assert ck.latest_complete(tmp_path) == tmp_path / "checkpoint-20"


def test_latest_complete_exclude_skips_a_broken_newest(tmp_path):
    make(tmp_path, 10, True)
    newest = make(tmp_path, 20, True)
    assert ck.latest_complete(tmp_path, exclude={newest}) == tmp_path / "checkpoint-10"
    assert ck.latest_complete(tmp_path, exclude={newest, tmp_path / "checkpoint-10"}) is None


def test_prune_keeps_k_newest_complete(tmp_path):
    for s in (10, 20, 30, 40):
        make(tmp_path, s, True)
    removed = ck.prune(tmp_path, keep=3)
    assert names(removed) == ["checkpoint-10"]
    assert names(ck.all_checkpoints(tmp_path)) == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]


def test_prune_never_deletes_incomplete_newer_than_newest_complete(tmp_path):
    make(tmp_path, 5, False)       # stale: older than the newest complete one
    for s in (10, 20, 30):
        make(tmp_path, s, True)
    make(tmp_path, 25, False)      # stale too
    make(tmp_path, 40, False)      # may still be being written by another rank
    make(tmp_path, 50, False)
    removed = ck.prune(tmp_path, keep=2)
    assert sorted(names(removed)) == ["checkpoint-10", "checkpoint-25", "checkpoint-5"]
    assert names(ck.all_checkpoints(tmp_path)) == ["checkpoint-20", "checkpoint-30", "checkpoint-40", "checkpoint-50"]
    assert (tmp_path / "checkpoint-40" / "state.json").exists()


def test_prune_with_no_complete_checkpoint_deletes_nothing(tmp_path):
    make(tmp_path, 10, False)
    make(tmp_path, 20, False)
    assert ck.prune(tmp_path, keep=2) == []
    assert len(ck.all_checkpoints(tmp_path)) == 2


def test_prune_keep_below_two_is_raised_to_two(tmp_path):
    for s in (1, 2, 3):
        make(tmp_path, s, True)
    for keep in (1, 0, -5):
        ck.prune(tmp_path, keep=keep)
        assert names(ck.complete_checkpoints(tmp_path)) == ["checkpoint-2", "checkpoint-3"]


def test_verify_catches_truncated_and_missing_files_and_newest_usable_falls_back(tmp_path):
    from launcher.checkpoints import mark_complete, newest_usable, verify

    root = tmp_path / "checkpoints"
    for step in (5, 10):
        d = root / f"checkpoint-{step}"
        (d / "sub").mkdir(parents=True)
        (d / "state.json").write_text('{"step": %d}' % step)
        (d / "sub" / "weights.bin").write_bytes(b"x" * 100)
        mark_complete(d, step)
    assert verify(root / "checkpoint-10") is None
    (root / "checkpoint-10" / "sub" / "weights.bin").write_bytes(b"x" * 40)   # truncated after the marker
    assert verify(root / "checkpoint-10") == "sub/weights.bin has 40 bytes, 100 when it was saved"
    best, rejected = newest_usable(root, set())
    assert best == root / "checkpoint-5" and [p.name for p, _ in rejected] == ["checkpoint-10"]
    (root / "checkpoint-5" / "state.json").unlink()
    assert verify(root / "checkpoint-5") == "state.json is missing"
    assert newest_usable(root, set())[0] is None
    assert newest_usable(root, {root / "checkpoint-10"})[1] == [(root / "checkpoint-5", "state.json is missing")]


def test_deep_verify_finds_what_sizes_cannot(tmp_path):
    """A garbled file of the right size passes the cheap check and fails the deep one."""
    p = make(tmp_path, 10, complete=True)
    (p / "state.json").write_bytes(b"\x00" * (p / "state.json").stat().st_size)
    assert ck.verify(p) is None
    assert ck.verify(p, deep=True).startswith("state.json cannot be read: JSONDecodeError")


def test_deep_verify_reads_safetensors_headers(tmp_path):
    import json
    import struct
    p = tmp_path / "checkpoint-5"
    p.mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (p / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    ck.mark_complete(p, 5)
    assert ck.verify(p, deep=True) is None
    whole = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + whole[8:])   # same size, header length garbled
    assert "declares a 1000000000-byte header" in ck.verify(p, deep=True)


def test_deep_verify_checks_torch_archives_crcs(tmp_path):
    import torch
    p = tmp_path / "checkpoint-7"
    p.mkdir()
    torch.save({"w": torch.arange(64.0)}, p / "optimizer.pt")
    ck.mark_complete(p, 7)
    assert ck.verify(p, deep=True) is None
    data = bytearray((p / "optimizer.pt").read_bytes())
    blob = bytes(torch.arange(64.0).numpy().tobytes())
    at = bytes(data).index(blob[8:40])   # inside the tensor's stored bytes: only the CRC can tell
    data[at] ^= 0xFF
    (p / "optimizer.pt").write_bytes(bytes(data))
    assert ck.verify(p) is None
    assert "fails its CRC check" in ck.verify(p, deep=True)
