"""README's benchmark command, on its quickest piece: `bin/bench --quick --only scale --json OUT`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration


def test_bench_prints_a_table_and_writes_json_for_the_scale_piece(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([str(REPO / "bin" / "bench"), "--quick", "--only", "scale", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPU only, simulated GPUs" in proc.stdout or "GPUs for real" in proc.stdout
    assert "target met?" in proc.stdout and "[scale]" in proc.stdout
    assert "bin/status --json, 1,000-job run, end to end" in proc.stdout
    res = json.loads(out.read_text())
    assert res["mode"] == "quick" and res["machine"]["cores"] >= 1
    (piece,) = res["pieces"]
    assert piece["piece"] == "scale" and piece["unavailable"] is None
    names = {r["name"]: r for r in piece["rows"]}
    sweep = names["validate + expand a 1,000-job sweep (load_plan)"]
    assert sweep["value"] > 0 and sweep["met"] in (True, False)   # reported, not enforced
    assert piece["details"]["sweep_jobs"] == 1002
