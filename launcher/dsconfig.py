"""DeepSpeed configs: find them by name or path, and fill in the batch "auto" values.

The batch values are filled here, not left to HF: with `use_cpu=True` on CPU ranks a
`"train_batch_size": "auto"` fails DeepSpeed's batch check (DESIGN.md), and the dry run can then
show the exact config every rank will get. Optimizer/precision "auto" values stay for HF.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from launcher import shipped as shipped_files   # (dsconfig.shipped() lists the names)
from launcher.pathcheck import clip, is_file
from launcher.spec import TrainingSpec


def ds_dir(repo_root: Path) -> Path:
    """The shipped configs: inside the installed package, else <repo_root>/ds_configs (launcher/shipped.py)."""
    return shipped_files.ds_configs_dir(repo_root)


def shipped(repo_root: Path) -> list[str]:
    return sorted(p.stem for p in ds_dir(repo_root).glob("*.json"))


def locate(name_or_path: str, plan_dir: Path, repo_root: Path) -> Path | None:
    """A shipped name (zero2) first, then a path relative to the plan, then as given."""
    named = ds_dir(repo_root) / f"{name_or_path}.json"
    if "/" not in name_or_path and is_file(named):
        return named
    try:
        as_given = Path(name_or_path).expanduser()
    except RuntimeError:  # ~user for no such user
        as_given = Path(name_or_path)
    for cand in (plan_dir / name_or_path, as_given):
        if is_file(cand):
            return cand.resolve()
    return None


def shape_problem(cfg: Any) -> str | None:
    """Why a loaded config is not one the launcher can fill and print (None when it is)."""
    if not isinstance(cfg, dict):
        return f"expected a JSON object, got {type(cfg).__name__}"
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        return f"zero_optimization must be an object (got {clip(zero)})"
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        return f"zero_optimization.stage must be 0, 1, 2 or 3 (got {clip(stage)})"
    return None


def resolve(raw: dict[str, Any], t: TrainingSpec, world_size: int) -> dict[str, Any]:
    cfg = copy.deepcopy(raw)
    fill = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.max_grad_norm,
    }
    for k, v in fill.items():
        if cfg.get(k, "auto") == "auto":
            cfg[k] = v
    return cfg


def zero_stage(cfg: dict[str, Any] | None) -> int | None:
    if not cfg:
        return None
    return int(cfg.get("zero_optimization", {}).get("stage", 0))
