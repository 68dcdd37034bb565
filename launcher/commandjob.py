"""Plan checks of the checkpoint keys that only jobs keeping their own checkpoints take
(MethodInfo.own_checkpoints: a `command` job's script saves where it saves; glob, complete,
resume_arg say where and how to hand one back), before anything starts.
"""

from __future__ import annotations

from typing import Callable

from launcher.spec import CheckpointSpec
from methods.registry import MethodInfo


def check_checkpoint(info: MethodInfo, ck: CheckpointSpec, where: str, err: Callable[[str, str], None]) -> None:
    own = {k: v for k, v in (("glob", ck.glob), ("resume_arg", ck.resume_arg)) if v}
    if not info.own_checkpoints:
        for k in own:
            err(f"{where}.checkpoint.{k}", f"only command jobs take checkpoint.{k} (method {info.name} saves its own)")
        return
    if ck.resume_arg and not ck.glob:
        err(f"{where}.checkpoint.resume_arg", "needs checkpoint.glob: where the script's checkpoints are")
    if ck.resume_arg and not any("{checkpoint}" in a for a in ck.resume_arg):
        err(f"{where}.checkpoint.resume_arg", "no {checkpoint} in it: e.g. [--resume_from_checkpoint, '{checkpoint}']")
