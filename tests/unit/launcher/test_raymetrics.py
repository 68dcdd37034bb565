"""The Ray gauges: one tag set for progress and memory, real Ray gauges that accept it, and a
Grafana dashboard that queries only the metric names and tags the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from launcher import monitor, raymetrics
from launcher.raymetrics import GAUGES, GPU_TAGS, JOB_TAGS, ProgressMetrics

DASHBOARD = Path(__file__).resolve().parents[3] / "cluster" / "grafana" / "launcher-dashboard.json"
BY_PROM_NAME = {g.prometheus_name: g for g in GAUGES}
METRIC_RE = re.compile(r"\bray_[A-Za-z0-9_]+")
SELECTOR_RE = re.compile(r"\{([^}]*)\}")
MATCHER_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LABEL_VALUES_RE = re.compile(r"label_values\(\s*([^,]+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")


def queries(dash: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) for every panel target and every query variable."""
    for p in dash["panels"]:
        for t in p.get("targets", []):
            yield f"panel {p['title']!r}", t["expr"], t.get("legendFormat", "")
    for v in dash["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            yield f"variable {v['name']!r}", q, ""


def labels_used(expr: str, legend: str) -> set[str]:
    out: set[str] = set()
    for sel in SELECTOR_RE.findall(expr.replace("{{", "").replace("}}", "")):
        out |= set(MATCHER_RE.findall(sel))
    for group in GROUPING_RE.findall(expr):
        out |= {x.strip() for x in group.split(",") if x.strip()}
    out |= {m[1] for m in LABEL_VALUES_RE.findall(expr)}
    return out | set(LEGEND_RE.findall(legend))


def test_progress_and_memory_gauges_share_the_job_tags() -> None:
    assert JOB_TAGS == ("run_id", "job_name", "attempt") and GPU_TAGS[:3] == JOB_TAGS
    for g in GAUGES:
        assert "job" not in g.tags and g.tags in (JOB_TAGS, GPU_TAGS)   # `job` would become exported_job
        assert g.prometheus_name == "ray_" + g.name
    assert set(raymetrics.gpu_tags("r", "j", 2, "n", "0")) == set(GPU_TAGS)
    assert raymetrics.job_tags("r", "j", 2) == {"run_id": "r", "job_name": "j", "attempt": "2"}


def test_real_ray_gauges_take_exactly_these_tags() -> None:
    pytest.importorskip("ray")
    m = ProgressMetrics("run-1")
    m.update("lisa", 3, 10, 1.25, attempt=2)   # Ray's Gauge.set raises on an undeclared or missing tag key
    m.update("lisa", 4, None, None, attempt=2)
    for gauge, spec in ((m.step, raymetrics.STEP), (m.loss, raymetrics.LOSS)):
        assert tuple(gauge._tag_keys) == spec.tags and gauge._name == spec.name
    with pytest.raises(ValueError):
        m.step.set(1, tags={"run": "run-1", "job": "lisa"})   # the old tags are refused now
    cur, peak = monitor.ray_gauges()   # the memory gauges the samplers set
    assert tuple(cur._tag_keys) == GPU_TAGS and cur._name == raymetrics.GPU_MEMORY.name
    assert peak._name == raymetrics.GPU_MEMORY_PEAK.name
    peak.set(12.5, tags=raymetrics.gpu_tags("run-1", "lisa", 2, "node-a", "0"))


def test_the_dashboard_uses_only_exported_metrics_and_tags() -> None:
    dash = json.loads(DASHBOARD.read_text())
    seen_metrics: set[str] = set()
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("progress", "loss", "memory", "peak"):
        assert word in titles, f"no {word} panel"
    for where, expr, legend in queries(dash):
        names = set(METRIC_RE.findall(expr))
        assert names, f"{where}: no launcher metric in {expr!r}"
        unknown = names - set(BY_PROM_NAME)
        assert not unknown, f"{where}: {sorted(unknown)} are not exported (launcher/raymetrics.py GAUGES)"
        seen_metrics |= names
        # A label must exist on every metric of the query, or the join/grouping silently drops series.
        common = set.intersection(*(set(BY_PROM_NAME[n].tags) for n in names))
        missing = labels_used(expr, legend) - common
        assert not missing, f"{where}: labels {sorted(missing)} are not tags of {sorted(names)}"
    assert seen_metrics == {g.prometheus_name for g in GAUGES}   # and every gauge is on the dashboard


def test_the_checker_catches_a_wrong_tag() -> None:
    """The dashboard check itself: the old `job` tag and a GPU tag on a progress gauge are caught."""
    assert labels_used('max by (job) (ray_sl_job_step{run=~"$r"})', "{{gpu}}") == {"job", "run", "gpu"}
    assert labels_used('a / on (run_id, job_name) b{node="x"}', "") == {"run_id", "job_name", "node"}
    assert LABEL_VALUES_RE.findall("label_values(ray_sl_job_step, run_id)") == [("ray_sl_job_step", "run_id")]
