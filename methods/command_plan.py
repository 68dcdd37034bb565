"""Plan-time checks of a `command` job's parameters (the researcher's own script), before anything starts.

Where it runs (`params.cwd`, relative to `params.root`, both by default the plan file's directory,
so `python train.py` finds the script next to the plan), and that the program and a script
argument exist there. Imports no torch: the launcher calls it through MethodInfo.prepare.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

SCRIPT_SUFFIXES = (".py", ".sh")


def resolve(params: dict[str, Any], plan_dir: Path, where: str, err: Callable[[str, str], None]) -> dict[str, Any]:
    """The params with root and cwd made absolute; problems reported through `err(key, message)`."""
    root = plan_dir / (params.get("root") or ".")   # an absolute root stays as it is
    cwd = root / (params.get("cwd") or ".")
    out = {**params, "root": str(root.resolve()), "cwd": str(cwd.resolve())}
    if not root.is_dir():
        err(f"{where}.params.root", f"{root} is not a directory: point it at the checkout the commands run in "
                                    "(--set defaults.params.root=/path/to/checkout)")
        return out
    if not cwd.is_dir():
        err(f"{where}.params.cwd", f"{cwd} is not a directory (a relative cwd starts at params.root)")
        return out
    argv: list[str] = params["argv"]
    if not argv:
        err(f"{where}.params.argv", "no command: give it as a list, e.g. argv: [python, train.py, --lr, '1e-4']")
        return out
    prog = argv[0]
    path = os.environ.get("SL_USER_PATH")   # what the script's ranks will search (methods/command.py)
    if "{" not in prog and shutil.which(prog, path=path) is None and shutil.which(str(cwd / prog)) is None:
        err(f"{where}.params.argv", f"{prog!r} is neither on PATH nor an executable file in {cwd}")
    for a in argv[1:2]:   # `python train.py`, `bash run.sh`: the script itself
        if a.endswith(SCRIPT_SUFFIXES) and "{" not in a and not (cwd / a).is_file():
            err(f"{where}.params.argv", f"script {a!r} not found in {cwd} (relative paths start at params.cwd, "
                                        "by default the plan's directory)")
    return out
