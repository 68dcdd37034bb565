"""A script's own checkpoints, found where it writes them and offered to the launcher's restart logic.

The script saves as it always does (HF Trainer: `<output_dir>/checkpoint-<step>/`, trainer_state.json
written last). Rank 0's wrapper mirrors each whole one into the job's `checkpoints/` as a small
pointer with the launcher's COMPLETE marker, so the controller's choice of where to resume, its
journal and its no-progress rule work as for built-in methods; on a restart the wrapper turns the
pointer it was given back into the script's path and appends `checkpoint.resume_arg`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from launcher.contract import checkpoints, read_json, write_json

STEP_RE = re.compile(r"(\d+)$")


def step_in(name: str) -> int | None:
    m = STEP_RE.search(name)
    return int(m.group(1)) if m else None


def whole(path: Path, complete: str) -> bool:
    """The completeness file is there (and parses, when it is JSON: it may be mid-write)."""
    f = path / complete
    if not f.is_file():
        return False
    if f.suffix == ".json":
        try:
            json.loads(f.read_text())
        except (ValueError, OSError):
            return False
    return True


def script_checkpoints(job_dir: Path, pattern: str, complete: str) -> list[tuple[int, Path]]:
    """The script's whole checkpoints, oldest step first."""
    found = []
    for p in job_dir.glob(pattern.removeprefix("{dir}/")):
        step = step_in(p.name)
        if p.is_dir() and step is not None and whole(p, complete):
            found.append((step, p.resolve()))
    return sorted(found)


def mirror(ckpt_root: Path, found: list[tuple[int, Path]]) -> None:
    """A pointer per whole script checkpoint; pointers whose checkpoint the script rotated away go."""
    wanted = {step for step, _ in found}
    for step, path in found:
        ptr = ckpt_root / f"checkpoint-{step}"
        if checkpoints.marker(ptr) is None:
            write_json(ptr / "source.json", {"path": str(path), "step": step})
            checkpoints.mark_complete(ptr, step, {"source": str(path)})
    for ptr in ckpt_root.glob("checkpoint-*") if ckpt_root.is_dir() else []:
        if step_in(ptr.name) not in wanted and (ptr / "source.json").exists():
            shutil.rmtree(ptr, ignore_errors=True)


def resume_source(resume_from: str | None, job_dir: Path, pattern: str, complete: str) -> Path | None:
    """The script checkpoint to resume from: the pointer the launcher chose, if what it points to is
    still whole; else the script's newest whole one (there is no pointer yet after a crash right
    after the save); None when there is none (a first start)."""
    if resume_from:
        src = read_json(Path(resume_from) / "source.json")
        if isinstance(src, dict) and whole(Path(src["path"]), complete):
            return Path(src["path"])
    found = script_checkpoints(job_dir, pattern, complete)
    return found[-1][1] if found else None
