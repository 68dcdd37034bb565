"""`bin/report RUN [--format md|json|csv|latex]`: the run's report.md, PNG plots and a results
table (also results.csv and results.tex); `bin/report --compare RUN RUN...`: runs side by side.

Reads only files (run.db read-only, the job directories), so it works on a live run and on a
finished one, on any machine that has the run directory. Writes <run>/report/ (report.md,
report.json, PNGs) and <run>/peak_memory.csv. The results table has the seed notes' shape:
job, what it evaluates, metric, value, judge, direction, reference value where known.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from launcher import monitor, report_sharing, report_tables, status
from launcher.atomic import read_json, read_jsonl, write_text
from launcher.layout import JobDir, RunDir
from launcher.monitor import PeakRow
from launcher.runarg import add_run_arguments, open_run
from methods.registry import METHODS


@dataclass(frozen=True)
class MetricInfo:
    label: str
    direction: str       # "↓ lower is better", "↑ higher is better", or ""
    unit: str = ""


# Keys a result.json may use, as the evaluation jobs and the seed notes name them.
METRICS: dict[str, MetricInfo] = {
    "hs": MetricInfo("HS", "↓ lower is better", "%"),
    "harmful_score": MetricInfo("HS", "↓ lower is better", "%"),
    # eval_hs without a moderation classifier: refusal keywords measure "did not refuse", not harm.
    "non_refusal": MetricInfo("non-refusal rate", "↓ lower is better", "%"),
    "fa": MetricInfo("FA", "↑ higher is better", "%"),
    "finetune_accuracy": MetricInfo("FA", "↑ higher is better", "%"),
    "accuracy": MetricInfo("accuracy", "↑ higher is better"),
    "asr": MetricInfo("ASR", "↓ lower is better", "%"),
    "attack_success_rate": MetricInfo("ASR", "↓ lower is better", "%"),
    # eval_fabe with a victim classifier: FABE's official protocol (the paper's ASR and clean accuracy).
    "asr_per_rewrite": MetricInfo("ASR, each rewrite alone", "↓ lower is better", "%"),
    "clean_accuracy": MetricInfo("clean accuracy", "↑ higher is better", "%"),
    "clean_accuracy_per_rewrite": MetricInfo("clean accuracy, each rewrite alone", "↑ higher is better", "%"),
    # A proxy with no counterpart in the paper: never set beside its ASR.
    "trigger_survival": MetricInfo("proxy: trigger survival", "↓ lower is better", "%"),
    "trigger_survival_rate": MetricInfo("proxy: trigger survival", "↓ lower is better", "%"),
    "clean_exact_match": MetricInfo("exact match, clean inputs", "↑ higher is better", "%"),
    "clean_bleu": MetricInfo("BLEU-4 (sacreBLEU 13a), clean inputs", "↑ higher is better"),
    "poisoned_bleu": MetricInfo("BLEU-4 (sacreBLEU 13a), poisoned inputs", "↑ higher is better"),
    "clean_bleu_seedtok": MetricInfo("BLEU-4 (seed tokens), clean inputs", "↑ higher is better"),
    "poisoned_bleu_seedtok": MetricInfo("BLEU-4 (seed tokens), poisoned inputs", "↑ higher is better"),
    "frozen_changed": MetricInfo("frozen weights changed", "must be 0"),
    "exact_match": MetricInfo("exact match", "↑ higher is better"),
    "bleu": MetricInfo("BLEU", "↑ higher is better"),
    "final_loss": MetricInfo("final loss", "↓ lower is better"),
    "eval_loss": MetricInfo("eval loss", "↓ lower is better"),
}
FORMATS = ("md", "json", "csv", "latex")
RESULTS_CSV, RESULTS_TEX = "results.csv", "results.tex"
NOT_METRICS = {"judge", "evaluates", "n", "num_samples", "n_clean", "n_poisoned", "n_asr", "bleu_signature"}
# The HF Trainer's own bookkeeping: in report.md, left out of the table bin/launch prints.
TRAINER_KEYS = {"epoch", "global_step", "train_runtime", "train_samples_per_second", "train_steps_per_second",
                "total_flos"}


@dataclass
class JobInfo:
    name: str
    method: str
    state: str
    attempts: list[dict[str, Any]]
    needs: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    peaks: list[PeakRow] = field(default_factory=list)
    loss: list[dict[str, Any]] = field(default_factory=list)   # {"step", "loss", "attempt"}
    step: int | None = None
    total_steps: int | None = None


@dataclass
class ResultRow:
    job: str
    evaluates: str
    metric: str
    value: float | str
    judge: str
    direction: str
    reference: str


@dataclass
class Report:
    run: str
    dir: str
    state: str
    plan: str
    created: float
    ended: float | None
    jobs: list[JobInfo]
    results: list[ResultRow]
    plots: dict[str, str] = field(default_factory=dict)   # name -> file name in the report dir

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for j in d["jobs"]:
            j.pop("loss")   # the curve is in metrics.jsonl and the plot; the JSON stays small
        return d


# ---------------------------------------------------------------------------------------- reading

def latest_job_file(jd: JobDir) -> dict[str, Any] | None:
    files = sorted(jd.root.glob("job-*.json"), key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else 0)
    return read_json(files[-1]) if files else None


def loss_series(jd: JobDir) -> list[dict[str, Any]]:
    out = []
    for rec in read_jsonl(jd.metrics):
        if isinstance(rec, dict) and isinstance(rec.get("loss"), (int, float)) and isinstance(rec.get("step"), (int, float)):
            out.append({"step": int(rec["step"]), "loss": float(rec["loss"]), "attempt": int(rec.get("attempt") or 1)})
    return out


def collect(rd: RunDir) -> Report:
    st = status.collect(rd)
    jobs = []
    for j in st["jobs"]:
        jd = rd.job(j["name"])
        jf = latest_job_file(jd) or {}
        jobs.append(JobInfo(name=j["name"], method=j["method"], state=j["state"], attempts=j["attempts"],
                            needs=j["needs"], params=jf.get("params") or {}, result=read_json(jd.result),
                            peaks=monitor.job_peaks(jd), loss=loss_series(jd), step=j["step"],
                            total_steps=j["total_steps"]))
    return Report(run=st["run"], dir=st["dir"], state=st["state"], plan=st["plan"], created=st["created"],
                  ended=st["ended"], jobs=jobs, results=results_table(jobs))


# ---------------------------------------------------------------------------------------- results table

def reference(metric: str, evaluated: JobInfo) -> str:
    """The paper/seed value a reproduction should approach (METHODS.md), where one is known."""
    info = METHODS.get(evaluated.method)
    return info.reference(metric, evaluated.params) if info else ""


def _evaluated(job: JobInfo, by_name: dict[str, JobInfo]) -> JobInfo:
    """What a job's numbers are about: for an evaluation job the model it judges (its first
    upstream job, the one whose adapter it loads); for any other job, the job itself."""
    ups = [by_name[n] for n in job.needs if n in by_name]
    info = METHODS.get(job.method)
    return ups[0] if info is not None and info.evaluates and ups else job


def _describe(job: JobInfo) -> str:
    """`lisa_run (lisa, poison 0.2, rho 1)`: the parameters its method names as what tells runs apart."""
    info = METHODS.get(job.method)
    shown = []
    for k in info.shown_params if info else ():
        v = job.params.get(k)
        if v is not None and (v or k in info.shown_if_zero):
            shown.append((k.removesuffix("_ratio"), v))
    return f"{job.name} ({', '.join([job.method, *(f'{k} {v}' for k, v in shown)])})"


def results_table(jobs: list[JobInfo]) -> list[ResultRow]:
    """One row per number in each job's result.json `metrics`. Known metric keys get a label, a
    direction and a reference; anything else is listed as it is (e.g. synthetic jobs' steps)."""
    by_name = {j.name: j for j in jobs}
    rows = []
    for job in jobs:
        if not job.result:
            continue
        metrics = job.result.get("metrics") or {}
        judge = str(metrics.get("judge") or job.result.get("judge") or "-")
        evaluated = _evaluated(job, by_name)
        evaluates = str(metrics.get("evaluates") or job.result.get("evaluates") or _describe(evaluated))
        for key, value in metrics.items():
            if key in NOT_METRICS or isinstance(value, (dict, list)) or isinstance(value, bool):
                continue
            info = METRICS.get(key.lower(), MetricInfo(key, ""))
            label = info.label + (f" ({info.unit})" if info.unit else "")
            rows.append(ResultRow(job.name, evaluates, label, value if isinstance(value, (int, float)) else str(value),
                                  judge, info.direction or "-", reference(info.label, evaluated) or "-"))
    return rows


def print_results(rd: RunDir, console: Any) -> int:
    """The results table at the end of bin/launch (the seed scripts printed each stage's score)."""
    from rich.table import Table

    rows = [r for r in collect(rd).results if r.metric not in TRAINER_KEYS]
    if rows:
        t = Table(title="results", title_justify="left")
        for col in ("job", "evaluates", "metric", "value", "judge", "better", "reference"):
            t.add_column(col, justify="right" if col == "value" else "left")
        for r in rows:
            t.add_row(r.job, r.evaluates, r.metric, _fmt(r.value, 2), r.judge, r.direction, r.reference)
        console.print(t)
    return len(rows)


# ---------------------------------------------------------------------------------------- markdown

def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in esc]]


def _wall(job: JobInfo, now: float) -> float | None:
    spans = [(a["ended"] or now) - a["started"] for a in job.attempts if a.get("started")]
    return sum(spans) if spans else None


def job_peak(job: JobInfo) -> PeakRow | None:
    known = [p for p in job.peaks if p.peak_mib is not None]
    return max(known, key=lambda p: p.peak_mib or 0.0) if known else None


def markdown(r: Report) -> str:
    now = r.ended or time.time()
    out = [f"# Run {r.run}", "",
           f"- state: **{r.state}**",
           f"- plan: `{r.plan}`",
           f"- started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.created))}, "
           f"{'took' if r.ended else 'running for'} {now - r.created:.0f} s",
           f"- directory: `{r.dir}`", "", "## Jobs", ""]
    rows = []
    for j in r.jobs:
        p = job_peak(j) or (j.peaks[0] if j.peaks else None)   # none known: say unknown, not '-'
        steps = f"{j.step}/{j.total_steps}" if j.total_steps else _fmt(j.step)
        rows.append([j.name, j.method, j.state, str(len(j.attempts)), _fmt(_wall(j, now)), steps,
                     f"{monitor.peak_text(p)} (GPU {p.gpu_index})" if p else "-", p.backend if p else "-"])
    out += _table(["job", "method", "state", "attempts", "wall s", "step", "peak MiB", "measured by"], rows)
    out += ["", "## Results", ""]
    if r.results:
        out += _table(["job", "evaluates", "metric", "value", "judge", "direction", "reference"],
                      [[x.job, x.evaluates, x.metric, _fmt(x.value, 2), x.judge, x.direction, x.reference]
                       for x in r.results])
        out += ["", f"The same table as [{RESULTS_CSV}]({RESULTS_CSV}) and [{RESULTS_TEX}]({RESULTS_TEX}) "
                "(LaTeX, booktabs)."]
    else:
        out.append("No job has written a result.json yet.")
    out += ["", "## Memory", "",
            "Peak of the job's processes per GPU (NVML per-process memory, or resident memory where the "
            "`host` backend measured), the device's peak used memory (other tenants included), and the "
            "ranks' own torch peaks (`max_memory_allocated` / `max_memory_reserved`). "
            f"All peaks: `{Path(r.dir).name}/peak_memory.csv`.", ""]
    peak_rows = [[j.name, str(p.attempt), p.host or p.node[:8], p.gpu_index, monitor.peak_text(p),
                  _fmt(p.peak_time - r.created if p.peak_time else None), _fmt(p.peak_step),
                  _fmt(p.peak_device_used_mib), _fmt(p.device_total_mib), _fmt(p.torch_max_allocated_mib),
                  _fmt(p.torch_max_reserved_mib), p.backend]
                 for j in r.jobs for p in j.peaks]
    if peak_rows:
        out += _table(["job", "attempt", "host", "GPU", "peak MiB", "at s", "at step", "device used MiB",
                       "device total MiB", "torch allocated MiB", "torch reserved MiB", "backend"], peak_rows)
    else:
        out.append("No memory samples (no job ran with the monitor).")
    shared = report_sharing.rows({j.name: j.attempts for j in r.jobs}, r.created, now)
    if shared:
        out += ["", "## Shared GPUs", "",
                "GPUs that packed jobs shared by memory (each one's share; the most at once and their shares then).", ""]
        out += _table(["host", "GPU", "attempts", "most at once", "tenants (share, seconds into the run)"], shared)
    for j in r.jobs:
        if f"mem_{j.name}" in r.plots:
            out += ["", f"### {j.name}", "", f"![memory of {j.name}]({r.plots[f'mem_{j.name}']})"]
    if "loss" in r.plots:
        out += ["", "## Loss", "", f"![loss curves]({r.plots['loss']})"]
    if "gantt" in r.plots:
        out += ["", "## Jobs on GPUs over time", "", f"![jobs on GPUs]({r.plots['gantt']})"]
    if "gpus" in r.plots:
        out += ["", "## GPU utilisation and memory per GPU", "",
                "Every job's samples of each GPU over the run: the device's used memory and utilisation where NVML "
                "measured them; with the `host` backend, the jobs' processes' resident memory and no utilisation.",
                "", f"![GPU utilisation and memory]({r.plots['gpus']})"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------- entry point

def build(rd: RunDir, plots: bool = True) -> Report:
    """Collect, plot, and write report.md, report.json and peak_memory.csv; returns the data."""
    r = collect(rd)
    monitor.write_run_peaks(rd, [j.name for j in r.jobs])
    rd.report_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        try:
            from launcher import report_plots   # matplotlib only when plotting
        except ImportError as e:   # matplotlib comes with the demo extra: the tables still get written
            print(f"no plots: {e}", file=sys.stderr)
        else:
            r.plots = report_plots.draw_all(r, rd)
    table = report_tables.results_table(r.results)
    write_text(rd.report_dir / RESULTS_CSV, report_tables.to_csv(table))
    write_text(rd.report_dir / RESULTS_TEX, report_tables.to_latex(table, caption=f"Results of run {r.run}",
                                                                   label=f"tab:{r.run}"))
    write_text(rd.report_md, markdown(r))
    write_text(rd.report_dir / "report.json", json.dumps(r.to_json(), indent=2, default=str) + "\n")
    return r


def _compare(args: argparse.Namespace) -> int:
    """--compare RUN RUN...: the runs' results side by side, deltas against the first run."""
    from launcher import rundir

    names, rows = [], []
    for name in args.compare:
        try:
            rd = rundir.find_run(args.runs_dir, name)
        except FileNotFoundError as e:
            print(str(e), file=sys.stderr)
            return 2
        names.append(rd.root.name)
        rows.append(collect(rd).results)
    cmp = report_tables.compare(rows)
    if args.format == "json":
        print(json.dumps({"runs": names, "rows": [asdict(c) for c in cmp]}, indent=2, default=str))
        return 0
    t = report_tables.compare_table(names, cmp)
    if args.format == "csv":
        sys.stdout.write(report_tables.to_csv(t))
    elif args.format == "latex":
        sys.stdout.write(report_tables.to_latex(t, caption=f"{' vs '.join(names)} (deltas against {names[0]})"))
    else:
        sys.stdout.write(report_tables.to_markdown(t))
    differ = [c for c in cmp if not c.same_judge]
    if differ:
        print(f"{len(differ)} metric(s) judged differently across the runs: not comparable as they stand",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bin/report", description="Write a run's report.md, plots, results.csv/.tex and "
                                                              "peak_memory.csv; or compare runs' results.")
    add_run_arguments(p)
    p.add_argument("--format", choices=FORMATS, default="md",
                   help="what to print: the report path (md), the report's data (json), or the results table as "
                        "CSV or LaTeX (also written to report/results.csv and results.tex)")
    p.add_argument("--compare", nargs="+", metavar="RUN",
                   help="the same metrics of these runs side by side, with deltas against the first and the judge "
                        "of each (printed in --format md, csv, latex or json; nothing is written)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (faster on huge runs)")
    args = p.parse_args(argv)
    if args.compare:
        if args.run:
            args.compare.insert(0, args.run)   # `bin/report A --compare B` compares A with B
        return _compare(args)
    rd = open_run(args)
    if rd is None:
        return 2
    r = build(rd, plots=not args.no_plots)
    if args.format == "json":
        print(json.dumps({**r.to_json(), "report": str(rd.report_md)}, indent=2, default=str))
    elif args.format == "csv":
        sys.stdout.write(rd.report_dir.joinpath(RESULTS_CSV).read_text())
    elif args.format == "latex":
        sys.stdout.write(rd.report_dir.joinpath(RESULTS_TEX).read_text())
    else:
        print(f"{rd.report_md}\n  {len(r.results)} result(s), {len(r.plots)} plot(s), peaks in {rd.peak_memory_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
