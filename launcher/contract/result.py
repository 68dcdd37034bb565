"""result.json: what a job's rank 0 says it did, written last (the driver checks it after exit 0)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from launcher.atomic import read_json, write_json


@dataclass
class Result:
    status: Literal["succeeded", "failed"]
    metrics: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    start_adapter: str | None = None  # stack mode: the frozen adapter under `adapter`, needed to use it
    start_adapter_mode: str | None = None
    dist: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)   # what a method adds beyond these (judge, evaluates, ...)


def write_result(path: Path, result: Result) -> None:
    data = asdict(result)
    data.update(data.pop("extra"))
    write_json(path, data)


def read_result(path: Path) -> Result | None:
    """None when there is no result yet; ValueError naming the file when it is not a result."""
    data = read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("status") not in ("succeeded", "failed"):
        raise ValueError(f"{path} is not a result (no status succeeded/failed)")
    known = {f.name for f in fields(Result)} - {"extra"}
    return Result(**{k: v for k, v in data.items() if k in known},
                  extra={k: v for k, v in data.items() if k not in known})
