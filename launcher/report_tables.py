"""The results as tables to paste elsewhere: CSV, LaTeX (booktabs), Markdown; and several runs'
results side by side with deltas (`bin/report --compare`).

Pure: rows in, text out. LaTeX is a small writer (not pandas' to_latex) so escaping is ours and
tested: `_ % & # $ { } ~ ^ \\` and the report's arrows and dashes come out as LaTeX.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from launcher.report import ResultRow

Cell = Union[str, float, int, None]

RESULT_COLUMNS = ["job", "evaluates", "metric", "value", "judge", "direction", "reference"]


@dataclass(frozen=True)
class TableData:
    header: list[str]
    rows: list[list[Cell]]
    numeric: frozenset[int] = frozenset()   # column indexes right-aligned in LaTeX/Markdown
    signed: frozenset[int] = frozenset()    # columns of differences: printed with their sign (+0.50)

    def text(self, i: int, c: Cell) -> str:
        t = cell_text(c)
        return "+" + t if i in self.signed and isinstance(c, (int, float)) and c > 0 else t


def results_table(results: list[ResultRow]) -> TableData:
    return TableData(list(RESULT_COLUMNS),
                     [[r.job, r.evaluates, r.metric, r.value, r.judge, r.direction, r.reference] for r in results],
                     frozenset({3}))


# ---------------------------------------------------------------------------------------- cells

def fmt_number(v: float | int, digits: int = 2) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"


def cell_text(v: Cell, digits: int = 2) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt_number(v, digits)
    return str(v)


# ---------------------------------------------------------------------------------------- CSV

def to_csv(t: TableData) -> str:
    """Numbers as they were measured (full precision), empty for none: for spreadsheets and pandas."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.header)
    for row in t.rows:
        w.writerow(["" if c is None else repr(c) if isinstance(c, float) else c for c in row])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- LaTeX

_LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    # The report's own symbols, so the table compiles with pdflatex as well as with unicode engines.
    "↓": r"$\downarrow$", "↑": r"$\uparrow$", "≈": r"$\approx$", "–": "--", "—": "---", "±": r"$\pm$",
    "Δ": r"$\Delta$", "−": "-",
}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in s)


def to_latex(t: TableData, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs `table` environment (needs \\usepackage{booktabs})."""
    cols = "".join("r" if i in t.numeric else "l" for i in range(len(t.header)))
    out = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        out.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        out.append(rf"\label{{{label}}}")
    out += [rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
            " & ".join(latex_escape(h) for h in t.header) + r" \\", r"\midrule"]
    for row in t.rows:
        out.append(" & ".join(latex_escape(t.text(i, c)) for i, c in enumerate(row)) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------- Markdown

def to_markdown(t: TableData) -> str:
    align = ["---:" if i in t.numeric else "---" for i in range(len(t.header))]
    lines = ["| " + " | ".join(t.header) + " |", "|" + "|".join(align) + "|"]
    for row in t.rows:
        lines.append("| " + " | ".join(t.text(i, c).replace("|", "\\|") for i, c in enumerate(row)) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- compare

@dataclass(frozen=True)
class CompareRow:
    job: str
    metric: str
    direction: str
    values: list[float | str | None]     # one per run, None where the run has no such number
    deltas: list[float | int | None]     # run i minus the first run, for runs 2..n
    judges: list[str | None]             # who produced each run's number
    same_judge: bool                     # False: the numbers are not comparable as they stand


def _num(v: float | str | None) -> float | int | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None   # ints stay ints: counts


def compare(runs: list[list[ResultRow]]) -> list[CompareRow]:
    """The same (job, metric) across runs, in first-seen order; deltas against the first run."""
    keys: list[tuple[str, str]] = []
    by_run: list[dict[tuple[str, str], ResultRow]] = []
    for rows in runs:
        d = {}
        for r in rows:
            k = (r.job, r.metric)
            d.setdefault(k, r)
            if k not in keys:
                keys.append(k)
        by_run.append(d)
    out = []
    for k in keys:
        rows = [d.get(k) for d in by_run]
        values = [r.value if r else None for r in rows]
        base = _num(values[0])
        nums = [_num(v) for v in values[1:]]
        deltas = [None if base is None or n is None else n - base for n in nums]
        judges = [r.judge if r else None for r in rows]
        present = {j for j in judges if j is not None}
        direction = next((r.direction for r in rows if r and r.direction not in ("", "-")), "-")
        out.append(CompareRow(k[0], k[1], direction, values, deltas, judges, len(present) <= 1))
    return out


def judge_cell(row: CompareRow, names: list[str]) -> str:
    present = [j for j in row.judges if j is not None]
    if row.same_judge:
        return present[0] if present else "-"
    return "differs: " + ", ".join(f"{n}: {j}" for n, j in zip(names, row.judges) if j is not None)


def compare_table(names: list[str], rows: list[CompareRow]) -> TableData:
    header = ["job", "metric", *names, *[f"Δ {n}" for n in names[1:]], "judge", "better"]
    n = len(names)
    body: list[list[Cell]] = [[r.job, r.metric, *r.values, *r.deltas, judge_cell(r, names), r.direction]
                              for r in rows]
    return TableData(header, body, frozenset(range(2, 1 + 2 * n)), frozenset(range(2 + n, 1 + 2 * n)))
