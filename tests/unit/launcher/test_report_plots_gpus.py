"""The per-GPU memory and utilisation plot: series per GPU from every job's samples, drawn for real."""

from __future__ import annotations

from pathlib import Path

from launcher.monitor import SampleRow
from launcher.report_plots import gpu_plot, gpu_series


def row(t, gpu, used, util, job_mib, host="h"):
    return SampleRow(t, "node0000", host, "nvml" if used is not None else "host", 1, gpu, None, used,
                     80000.0 if used else None, util, job_mib, {}, None)


def ink(png: Path) -> float:
    import matplotlib.image as mpimg
    img = mpimg.imread(png)
    return float((img[..., :3].min(axis=-1) < 0.9).mean())


def test_gpu_series_merges_jobs_in_time_order_and_prefers_device_memory() -> None:
    rows = [row(3, "0", 900.0, 50.0, 100.0), row(1, "0", 500.0, 10.0, 80.0), row(2, "1", None, None, 42.0)]
    s = gpu_series(rows)
    assert sorted(s) == [("h", "0"), ("h", "1")]
    assert s[("h", "0")].times == [1, 3] and s[("h", "0")].mib == [500.0, 900.0] and s[("h", "0")].util == [10.0, 50.0]
    assert s[("h", "1")].mib == [42.0] and s[("h", "1")].util == [None]   # host backend: the job's processes


def test_gpu_plot_draws_memory_and_utilisation(tmp_path: Path) -> None:
    rows = [row(100 + i, g, 1000.0 + 10 * i, float(i % 100), None) for i in range(200) for g in ("0", "1")]
    name = gpu_plot(gpu_series(rows), 100.0, tmp_path / "gpus.png")
    assert name == "gpus.png" and ink(tmp_path / "gpus.png") > 0.02
    assert gpu_plot({}, 0.0, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
