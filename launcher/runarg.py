"""The RUN argument every command after `launch` takes, and finding that run directory."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # stdlib only at import: the `sl CMD --help` path builds these parsers without the venv
    from launcher.layout import RunDir


def default_runs_dir() -> Path:
    return Path(os.environ.get("SL_RUNS_DIR", "runs"))


def add_run_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    if required:
        p.add_argument("run", help="run id or directory")
    else:
        p.add_argument("run", nargs="?", help="run id or directory (default: the latest run)")
    p.add_argument("--runs-dir", type=Path, default=default_runs_dir(), help="where run directories are (default: ./runs)")


def open_run(args: argparse.Namespace) -> RunDir | None:
    """The run named by args.run under args.runs_dir, or None after saying on stderr why not."""
    from launcher import rundir
    try:
        return rundir.find_run(args.runs_dir, args.run)
    except FileNotFoundError as e:
        print(str(e), file=sys.stderr)
        return None
