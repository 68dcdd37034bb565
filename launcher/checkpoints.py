"""Checkpoint completeness and retention.

A checkpoint counts only when its COMPLETE marker exists; the marker is written last, after all
ranks finished writing (the caller synchronises). Resume takes the newest complete one.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zipfile
from pathlib import Path

from launcher.atomic import read_json, write_json

MARKER = "COMPLETE"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def step_of(path: Path) -> int | None:
    m = _STEP.match(path.name)
    return int(m.group(1)) if m else None


def all_checkpoints(ckpt_root: Path) -> list[Path]:
    """checkpoint-<step> dirs, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0)


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    return [p for p in all_checkpoints(ckpt_root) if is_complete(p)]


def latest_complete(ckpt_root: Path, exclude: set[Path] | frozenset[Path] = frozenset()) -> Path | None:
    """Newest complete checkpoint, skipping ones found unreadable before (exclude)."""
    for p in reversed(complete_checkpoints(ckpt_root)):
        if p not in exclude:
            return p
    return None


def identity(path: Path) -> str:
    """Which save of this step it is: its COMPLETE marker's inode and mtime ("" with no marker)."""
    try:
        st = (path / MARKER).stat()
    except FileNotFoundError:
        return ""
    return f"{st.st_ino}:{st.st_mtime_ns}"


def manifest(path: Path) -> dict[str, int]:
    """Every file of the checkpoint with its size: what `verify` checks before a resume."""
    return {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != MARKER}


def mark_complete(path: Path, step: int, extra: dict | None = None) -> None:
    write_json(path / MARKER, {"step": step, "files": manifest(path), **(extra or {})})


def verify(path: Path, deep: bool = False) -> str | None:
    """None if the checkpoint is whole; else what is wrong (a file missing, truncated or unreadable).

    Sizes against the manifest is cheap and done before every resume. `deep` also reads every file
    of a format that can check itself (JSON parses, safetensors' header accounts for every byte,
    torch's zip archives pass their CRCs): done when an attempt died loading the checkpoint.
    """
    m = marker(path)
    if m is None:
        return "no COMPLETE marker"
    files = m.get("files") or {}
    for rel, size in files.items():
        f = path / rel
        try:
            actual = f.stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual} bytes, {size} when it was saved"
    if deep:
        for rel in files:
            problem = _unreadable(path / rel)
            if problem:
                return f"{rel} {problem}"
    return None


TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def _unreadable(f: Path) -> str | None:
    try:
        if f.suffix == ".json":
            json.loads(f.read_bytes())
        elif f.suffix == ".safetensors":
            return _safetensors_problem(f)
        elif f.suffix in TORCH_SUFFIXES or zipfile.is_zipfile(f):
            if not zipfile.is_zipfile(f):
                return "is not a torch archive (zip)"
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
            if bad is not None:
                return f"fails its CRC check in {bad}"
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, TypeError, AttributeError, IndexError) as e:
        return f"cannot be read: {type(e).__name__}: {e}"[:300]
    return None


def _safetensors_problem(f: Path) -> str | None:
    size = f.stat().st_size
    with open(f, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            return "is shorter than a safetensors header"
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            return f"declares a {n}-byte header in a {size}-byte file"
        header = json.loads(fh.read(n))
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"holds {size} bytes, its header accounts for {8 + n + end}"
    return None


def newest_usable(ckpt_root: Path, exclude: set[Path]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint that verifies, and the newer ones rejected on the way (with why)."""
    rejected = []
    for p in reversed(complete_checkpoints(ckpt_root)):
        if p in exclude:
            continue
        why = verify(p)
        if why is None:
            return p, rejected
        rejected.append((p, why))
    return None, rejected


def marker(path: Path) -> dict | None:
    try:
        return read_json(path / MARKER)
    except ValueError:  # a marker that is not JSON counts as no marker
        return None


def prune(ckpt_root: Path, keep: int) -> list[Path]:
    """Keep the `keep` newest complete checkpoints; drop older complete ones and stale incomplete ones.

    An incomplete checkpoint newer than the newest complete one may still be being written by
    another rank, so only incomplete ones older than it are removed.
    """
    keep = max(keep, 2)
    complete = complete_checkpoints(ckpt_root)
    newest = step_of(complete[-1]) if complete else None
    removed = []
    for p in complete[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if newest is not None:
        for p in all_checkpoints(ckpt_root):
            if not is_complete(p) and (step_of(p) or 0) < newest:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed
