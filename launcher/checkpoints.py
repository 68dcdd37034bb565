"""Checkpoint completeness and retention.

A checkpoint counts only when its COMPLETE marker exists; the marker is written last, after all
ranks finished writing (the caller synchronises). Resume takes the newest complete one.
"""

from __future__ import annotations

import re
import shutil
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


def mark_complete(path: Path, step: int, extra: dict | None = None) -> None:
    write_json(path / MARKER, {"step": step, **(extra or {})})


def marker(path: Path) -> dict | None:
    return read_json(path / MARKER)


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
