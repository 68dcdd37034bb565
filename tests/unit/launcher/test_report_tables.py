"""Results as CSV and LaTeX (escaping included) and runs compared side by side."""

from __future__ import annotations

import csv
import io

from launcher.report import ResultRow
from launcher.report_tables import (TableData, compare, compare_table, latex_escape, results_table, to_csv, to_latex,
                                    to_markdown)

ROWS = [ResultRow("lisa_hs", "lisa (lisa, poison 0.2, rho 3)", "HS (%)", 62.5, "refusal_keywords",
                  "↓ lower is better", "≈ 15 % (Lisa)"),
        ResultRow("sft_fa", "sft_poison (sft)", "FA (%)", 54.166666, "sst2_exact_match", "↑ higher is better",
                  "≈ 91–92 %"),
        ResultRow("train", "train (synthetic)", "steps", 40, "-", "-", "-")]


def test_csv_keeps_full_precision_and_reads_back() -> None:
    text = to_csv(results_table(ROWS))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["job", "evaluates", "metric", "value", "judge", "direction", "reference"]
    assert float(rows[1]["value"]) == 54.166666 and rows[2]["value"] == "40"
    assert rows[0]["evaluates"] == "lisa (lisa, poison 0.2, rho 3)"   # the comma is quoted, not a new column
    assert rows[0]["reference"] == "≈ 15 % (Lisa)"


def test_latex_escape_of_specials() -> None:
    assert latex_escape("a_b % c & d # e") == r"a\_b \% c \& d \# e"
    assert latex_escape(r"$x^2~{y}\z") == r"\$x\textasciicircum{}2\textasciitilde{}\{y\}\textbackslash{}z"
    assert latex_escape("↓ ≈ 91–92") == r"$\downarrow$ $\approx$ 91--92"


def test_latex_table_is_booktabs_with_escaped_cells() -> None:
    tex = to_latex(results_table(ROWS), caption="Results of run demo_1", label="tab:demo_1")
    lines = tex.splitlines()
    assert lines[0] == r"\begin{table}[ht]" and lines[-1] == r"\end{table}"
    assert r"\caption{Results of run demo\_1}" in lines and r"\label{tab:demo_1}" in lines
    assert r"\begin{tabular}{lllrlll}" in lines and r"\toprule" in lines and r"\bottomrule" in lines
    assert r"lisa\_hs & lisa (lisa, poison 0.2, rho 3) & HS (\%) & 62.50 & refusal\_keywords & " \
           r"$\downarrow$ lower is better & $\approx$ 15 \% (Lisa) \\" in lines
    assert r"train & train (synthetic) & steps & 40 & - & - & - \\" in lines
    # every row has as many cells as the header
    body = [ln for ln in lines if ln.endswith(r"\\")]
    assert len(body) == 4 and all(ln.count(" & ") == 6 for ln in body)


def test_markdown_escapes_pipes_and_right_aligns_numbers() -> None:
    md = to_markdown(TableData(["a", "n"], [["x|y", 1.5]], frozenset({1})))
    assert md == "| a | n |\n|---|---:|\n| x\\|y | 1.50 |\n"


def test_compare_deltas_against_the_first_run_and_judges() -> None:
    other = [ResultRow("lisa_hs", "lisa", "HS (%)", 50.0, "beaver-dam-7b", "↓ lower is better", "-"),
             ResultRow("sft_fa", "sft", "FA (%)", 60.166666, "sst2_exact_match", "↑ higher is better", "-"),
             ResultRow("new_job", "new", "steps", 3, "-", "-", "-")]
    cmp = compare([ROWS, other])
    by = {(c.job, c.metric): c for c in cmp}
    assert [(c.job, c.metric) for c in cmp] == [("lisa_hs", "HS (%)"), ("sft_fa", "FA (%)"), ("train", "steps"),
                                                ("new_job", "steps")]
    assert by[("lisa_hs", "HS (%)")].deltas == [-12.5] and not by[("lisa_hs", "HS (%)")].same_judge
    assert abs(by[("sft_fa", "FA (%)")].deltas[0] - 6.0) < 1e-9 and by[("sft_fa", "FA (%)")].same_judge
    assert by[("train", "steps")].values == [40, None] and by[("train", "steps")].deltas == [None]
    assert by[("new_job", "steps")].values == [None, 3]

    t = compare_table(["runA", "runB"], cmp)
    assert t.header == ["job", "metric", "runA", "runB", "Δ runB", "judge", "better"]
    md = to_markdown(t).splitlines()
    assert md[2] == "| lisa_hs | HS (%) | 62.50 | 50.00 | -12.50 | differs: runA: refusal_keywords, " \
                    "runB: beaver-dam-7b | ↓ lower is better |"
    assert md[3] == "| sft_fa | FA (%) | 54.17 | 60.17 | +6.00 | sst2_exact_match | ↑ higher is better |"
    assert md[4] == "| train | steps | 40 | - | - | - | - |"
    rows = list(csv.reader(io.StringIO(to_csv(t))))
    assert rows[2][4] == "6.0" or abs(float(rows[2][4]) - 6.0) < 1e-9
    assert r"$\Delta$ runB" in to_latex(t)


def test_compare_of_three_runs_has_two_delta_columns() -> None:
    a = [ResultRow("j", "j", "m", 1.0, "x", "-", "-")]
    b = [ResultRow("j", "j", "m", 3.0, "x", "-", "-")]
    c = [ResultRow("j", "j", "m", 0.5, "x", "-", "-")]
    t = compare_table(["a", "b", "c"], compare([a, b, c]))
    assert t.header[2:7] == ["a", "b", "c", "Δ b", "Δ c"]
    assert t.rows[0][2:7] == [1.0, 3.0, 0.5, 2.0, -0.5]
    assert to_markdown(t).splitlines()[2] == "| j | m | 1.00 | 3.00 | 0.50 | +2.00 | -0.50 | x | - |"


def test_compare_of_counts_gives_whole_deltas() -> None:
    a = [ResultRow("j", "j", "steps", 10, "-", "-", "-")]
    b = [ResultRow("j", "j", "steps", 20, "-", "-", "-")]
    (row,) = compare([a, b])
    assert row.deltas == [10] and isinstance(row.deltas[0], int)
    assert to_markdown(compare_table(["a", "b"], [row])).splitlines()[2] == "| j | steps | 10 | 20 | +10 | - | - |"
