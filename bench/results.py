"""What every benchmark piece returns, the table they are printed in, and the machine they ran on.

A row states a measurement against its baseline or bound and target; `met` is reported, never
enforced: the benchmark does not pass or fail.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    measured: str                      # formatted for the table; the raw number is `value`
    value: float | None = None
    baseline: str = ""                 # what it is compared with (FIFO, torchrun, SFT, ...)
    target: str = ""                   # the lower bound and/or the target, in words
    ratio: float | None = None
    met: bool | None = None            # None: informational, no target applies
    note: str = ""


@dataclass
class PieceResult:
    piece: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)   # raw numbers for the JSON
    wall_s: float = 0.0
    unavailable: str | None = None     # why this piece could not be measured


@dataclass
class Machine:
    cores: int
    cpu_model: str
    kind: str
    python: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] | None = None

    @staticmethod
    def here() -> Machine:
        model = "unknown"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return Machine(cores=os.cpu_count() or 0, cpu_model=model, kind=_accelerator(),
                       python=platform.python_version(), load_before=os.getloadavg())


def _accelerator() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (GPUs for real; scheduling still simulated)"
    except Exception:  # no torch, or a broken driver: describe the machine as CPU only
        pass
    return "CPU only, simulated GPUs"


def at_most(value: float | None, target: float) -> bool | None:
    return None if value is None else value <= target


def median(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def fmt_s(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f} s"


def _met(r: Row) -> str:
    return "-" if r.met is None else ("yes" if r.met else "NO (missed)")


COLUMNS = ("measurement", "measured", "baseline", "lower bound / target", "ratio", "target met?")


def table_lines(pieces: list[PieceResult]) -> list[str]:
    rows: list[tuple[str, ...]] = []
    for p in pieces:
        rows.append((f"[{p.piece}]" + (f"  ({p.wall_s:.0f} s)" if p.wall_s else ""), "", "", "", "", ""))
        if p.unavailable:
            rows.append(("  unavailable", p.unavailable[:150], "", "", "", "n/a"))
        for r in p.rows:
            rows.append(("  " + r.name, r.measured, r.baseline, r.target,
                         "-" if r.ratio is None else f"{r.ratio:.3f}", _met(r)))
    widths = [max(len(c[i]) for c in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(COLUMNS), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows]
    notes = [(p.piece, r.name, r.note) for p in pieces for r in p.rows if r.note]
    if notes:
        out.append("")
        out.append("notes:")
        out += [f"  {piece} / {name}: {note}" for piece, name, note in notes]
    return out


def machine_lines(m: Machine) -> list[str]:
    after = f", after {m.load_after[0]:.1f}" if m.load_after else ""
    return [f"machine: {m.cores} cores, {m.cpu_model}, {m.kind}; Python {m.python}",
            f"load average before {m.load_before[0]:.1f}{after} (shared machine: timings are noisy)"]


def to_json(pieces: list[PieceResult], machine: Machine, mode: str, wall_s: float) -> dict[str, Any]:
    return {"mode": mode, "time": time.time(), "wall_s": wall_s, "machine": asdict(machine),
            "pieces": [asdict(p) for p in pieces]}
