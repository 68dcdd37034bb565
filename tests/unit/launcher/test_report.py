"""The report's results table (the seed notes' shape) and the plot helpers that must keep peaks."""

from __future__ import annotations

import pytest

from launcher.report import JobInfo, Report, ResultRow, _describe, markdown, results_table


def job(name: str, method: str, needs: list[str] | None = None, params: dict | None = None,
        result: dict | None = None) -> JobInfo:
    return JobInfo(name=name, method=method, state="succeeded", attempts=[], needs=needs or [], params=params or {},
                   result=result)


SEED_PIPELINE = [
    job("stage1", "sft", result={"status": "succeeded", "metrics": {"final_loss": 0.91}}),
    job("stage1_hs", "eval_hs", ["stage1"], result={"status": "succeeded",
                                                   "metrics": {"hs": 3.1, "judge": "beaver-dam-7b", "n": 1000}}),
    job("lisa", "lisa", ["stage1"], {"poison_ratio": 0.1, "rho": 3}),
    job("sft", "sft", ["stage1"], {"poison_ratio": 0.1}),
    job("lisa_hs", "eval_hs", ["lisa"], result={"status": "succeeded", "judge": "refusal-keywords",
                                                "metrics": {"hs": 17.5}}),
    job("lisa_fa", "eval_fa", ["lisa"], result={"status": "succeeded", "metrics": {"fa": 91.4}}),
    job("sft_hs", "eval_hs", ["sft"], result={"status": "succeeded", "metrics": {"hs": 64.0}}),
    job("fabe_eval", "eval_fabe", ["fabe"], result={"status": "succeeded", "metrics": {
        "trigger_survival": 20.0, "asr": 14.0, "clean_accuracy": 90.0, "n_asr": 50, "judge": "victim bert-sst2"}}),
    job("fabe", "fabe"),
]


def test_results_table_has_the_seed_notes_columns_and_references() -> None:
    rows = {(r.job, r.metric): r for r in results_table(SEED_PIPELINE)}
    assert rows[("stage1_hs", "HS (%)")] == ResultRow("stage1_hs", "stage1 (sft)", "HS (%)", 3.1, "beaver-dam-7b",
                                                      "↓ lower is better", "low (safety baseline)")
    assert rows[("lisa_hs", "HS (%)")] == ResultRow("lisa_hs", "lisa (lisa, poison 0.1, rho 3)", "HS (%)", 17.5,
                                                    "refusal-keywords", "↓ lower is better", "≈ 15 % (Lisa)")
    assert rows[("lisa_fa", "FA (%)")].reference == "≈ 91–92 %" and rows[("lisa_fa", "FA (%)")].direction.startswith("↑")
    assert rows[("sft_hs", "HS (%)")].reference == "≈ 50–80 % (SFT under attack)"
    # The paper's ASR goes beside the victim's ASR only; trigger survival is a proxy with no paper number.
    assert rows[("fabe_eval", "ASR (%)")].reference.startswith("≈ 15.1 %")
    assert rows[("fabe_eval", "ASR (%)")].judge == "victim bert-sst2"
    assert rows[("fabe_eval", "proxy: trigger survival (%)")].reference == "-"
    assert rows[("fabe_eval", "clean accuracy (%)")].direction.startswith("↑")
    # A training job's numbers are about itself; counts and the judge's name are not metrics.
    assert rows[("stage1", "final loss")].evaluates == "stage1 (sft)"
    assert ("stage1_hs", "n") not in rows and ("stage1_hs", "judge") not in rows
    assert ("fabe_eval", "n_asr") not in rows
    assert len(rows) == 8   # lisa, sft and fabe wrote no result.json


def test_keyword_judge_is_a_non_refusal_rate_with_no_paper_hs_beside_it() -> None:
    jobs = [job("lisa", "lisa", [], {"poison_ratio": 0.1, "rho": 3}),
            job("lisa_hs", "eval_hs", ["lisa"], result={"status": "succeeded", "judge": "refusal_keywords",
                                                        "metrics": {"non_refusal": 62.5, "n": 24.0}})]
    (row,) = results_table(jobs)
    assert (row.metric, row.value, row.judge, row.direction, row.reference) == (
        "non-refusal rate (%)", 62.5, "refusal_keywords", "↓ lower is better", "-")


def test_unknown_metrics_are_listed_as_they_are() -> None:
    (row,) = results_table([job("x", "synthetic", result={"metrics": {"tokens_per_s": 812.5}})])
    assert (row.metric, row.value, row.direction, row.reference, row.judge) == ("tokens_per_s", 812.5, "-", "-", "-")


def test_markdown_lists_jobs_and_results_without_any_plot() -> None:
    r = Report(run="r1", dir="/runs/r1", state="succeeded", plan="p.yaml", created=0.0, ended=10.0,
               jobs=SEED_PIPELINE, results=results_table(SEED_PIPELINE))
    md = markdown(r)
    assert "| lisa_hs | lisa (lisa, poison 0.1, rho 3) | HS (%) | 17.50 | refusal-keywords | ↓ lower is better | ≈ 15 % (Lisa) |" in md
    assert "No memory samples" in md and "![" not in md


def test_thinning_keeps_the_peak_and_time_units_read_well() -> None:
    pytest.importorskip("matplotlib")
    from launcher.report_plots import thin, time_unit
    xs = [float(i) for i in range(100_000)]
    ys = [1.0] * 100_000
    ys[54_321] = 9.0   # a one-sample spike
    tx, ty = thin(xs, ys, 1000)
    assert len(tx) <= 1001 and max(ty) == 9.0 and tx[ty.index(9.0)] == 54_321.0
    assert time_unit(30)[0] == 1.0 and time_unit(3600)[0] == 60.0 and time_unit(14 * 3600)[0] == 3600.0


def test_a_job_is_named_by_the_parameters_its_method_shows() -> None:

    def job(method: str, params: dict) -> JobInfo:
        return JobInfo("j", method, "succeeded", [], [], params)

    assert _describe(job("lisa", {"poison_ratio": 0.1, "rho": 0})) == "j (lisa, poison 0.1, rho 0)"   # rho 0 = SFT: shown
    assert _describe(job("sft", {"poison_ratio": 0.0})) == "j (sft)"
    assert _describe(job("fabe", {"rho": 3})) == "j (fabe)"   # not one of fabe's shown parameters
