"""Plan fuzzer: every mutated shipped plan ends in success or a clean plan error, never a traceback.

Each case (plan_mutations.make_case) takes one shipped plan and a seed, and changes it: values
swapped for odd types, keys deleted or misspelt, subtrees copied elsewhere, bytes flipped, --set
overrides (into scalars too). It then goes through `bin/launch --dry-run` in-process and, where
that succeeds, the steps a real launch takes before Ray starts (validation against the cluster,
the run directory, every job's directory and job file). Clean is what bin/launch reports without
a traceback: its exit code (2: the plan's problems, or a missing ${env:...} variable), argparse's
usage exit, or a PlanError from the cluster check; anything else fails, with the seed to rerun it.

Seeds run in order from SL_FUZZ_SEED (default 0) until SL_FUZZ_CASES cases or SL_FUZZ_BUDGET_S
seconds (default 20) are spent, whichever comes first: a longer budget only adds seeds. To
reproduce one case: SL_FUZZ_SEED=<seed> SL_FUZZ_CASES=1 pytest tests/unit/launcher/test_plan_fuzz.py
A long run (past pytest's 600 s timeout, add -o timeout=0):
    SL_FUZZ_BUDGET_S=1200 SL_FUZZ_CASES=10000 pytest -s tests/unit/launcher/test_plan_fuzz.py
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from launcher import rundir
from launcher.cli import launch_main
from launcher.plan import PlanError, load_plan
from launcher.resources import ClusterShape
from tests.unit.launcher.plan_mutations import Case, make_case

REPO = Path(__file__).resolve().parents[3]
PLANS = sorted((REPO / "plans").glob("*.yaml"))
FIRST_SEED = int(os.environ.get("SL_FUZZ_SEED", "0"))
MAX_CASES = int(os.environ.get("SL_FUZZ_CASES", "100000"))
BUDGET_S = float(os.environ.get("SL_FUZZ_BUDGET_S", "20"))
SHOWN = 5   # failures printed in full; the rest are counted by where they were raised


@dataclass(frozen=True)
class Failure:
    case: Case
    error: BaseException
    where: str   # the innermost frame, to group one bug's many seeds

    def report(self) -> str:
        tb = "".join(traceback.format_exception(self.error)[-6:])
        text = self.case.text.decode("utf-8", "backslashreplace")
        return (f"{self.case.describe()}\n  reproduce: SL_FUZZ_SEED={self.case.seed} SL_FUZZ_CASES=1 pytest "
                f"tests/unit/launcher/test_plan_fuzz.py\n  sets: {list(self.case.sets)!r:.500}\n"
                f"  plan text (start):\n{text[:1200]}\n{tb}")


def _stdio() -> tuple[io.TextIOWrapper, io.TextIOWrapper]:
    # Like a terminal's: stdout strict UTF-8 (text that cannot be printed fails here as it would
    # there), stderr backslashreplace as Python sets it.
    return (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict"),
            io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace"))


def run_case(case: Case, work: Path) -> str:
    """How the case ended (a clean outcome); raises whatever the launcher raised that is not clean."""
    plan = work / case.plan.name
    plan.write_bytes(case.text)
    runs = work / "runs"
    argv = [str(plan), "--dry-run", "--runs-dir", str(runs)] + [a for s in case.sets for a in ("--set", s)]
    out, err = _stdio()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = launch_main(argv)
            out.flush()
            err.flush()
    except SystemExit as e:   # argparse's usage error: exit 2 with a message, no traceback
        if e.code != 2:
            raise
        return "usage error"
    if code != 0:
        return f"exit {code}"
    # What a real launch does next, short of starting Ray: validate against the cluster, make the
    # run directory, and (as the driver does per attempt) each job's directory and job file.
    try:
        p = load_plan(plan, list(case.sets), cluster=ClusterShape.single(2))
    except PlanError:
        return "dry run ok, cluster check failed"
    rd = rundir.create(p, runs)
    for job in p.jobs.values():
        rundir.write_job_file(rundir.job_file(p, job, rd, 1, None), rd)
    return "run directory made"


def test_shipped_plans_exist():
    assert PLANS, "no plans/*.yaml to fuzz"


def test_fuzzed_plans_fail_cleanly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    deadline = time.monotonic() + BUDGET_S
    failures: list[Failure] = []
    outcomes: Counter[str] = Counter()
    ran = 0
    for seed in range(FIRST_SEED, FIRST_SEED + MAX_CASES):
        if time.monotonic() > deadline:
            break
        case = make_case(seed, PLANS)
        work = tmp_path / "case"
        work.mkdir()
        (work / "data").symlink_to(REPO / "plans" / "data")   # the shipped plans' relative data paths
        try:
            outcomes[run_case(case, work)] += 1
        except Exception as e:  # the point of the fuzzer: anything that is not a clean plan error
            last = traceback.extract_tb(e.__traceback__)[-1]
            failures.append(Failure(case, e, f"{type(e).__name__} at {Path(last.filename).name}:{last.lineno}"))
        finally:
            shutil.rmtree(work)
        ran += 1
    print(f"plan fuzz: {ran} cases from seed {FIRST_SEED}: {dict(outcomes)}, {len(failures)} traceback(s)")
    assert ran, "the time budget allowed no case at all"
    if failures:
        groups: dict[str, list[int]] = {}
        for f in failures:
            groups.setdefault(f.where, []).append(f.case.seed)
        summary = "\n".join(f"  {w}: {len(s)} case(s), seeds {s[:10]}" for w, s in groups.items())
        shown = [next(f for f in failures if f.where == w) for w in list(groups)[:SHOWN]]
        raise AssertionError(f"{len(failures)} of {ran} fuzzed plans ended in a traceback, not a plan error:\n"
                             f"{summary}\n\n" + "\n\n".join(f.report() for f in shown))
