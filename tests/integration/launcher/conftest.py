"""Launcher integration tests run the real CLI (bin/launch, bin/status) with a real local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO


def launch(plan: Path | str, runs: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "launcher", "launch", str(plan), "--runs-dir", str(runs), "--no-dashboard", *extra]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def status(runs: Path, run: str | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "launcher", "status", "--runs-dir", str(runs), "--json", *([run] if run else [])]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def write_plan(tmp: Path, text: str) -> Path:
    p = tmp / "plan.yaml"
    p.write_text(text)
    return p


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"
