"""The host backend on real processes: the peak of a known allocation, and files intact after SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.monitor_cost import BUFFER_MIB, spike   # the allocation the benchmark measures too
from launcher import monitor
from launcher.layout import JobDir
from tests.helpers import REPO

pytestmark = pytest.mark.integration


def test_host_backend_captures_a_known_peak_within_5_percent(tmp_path: Path) -> None:
    jd = JobDir(tmp_path / "job")
    baseline, peak, after = spike(jd.root)   # the sampler at its default interval: 0.5 s
    measured = peak.peak_mib - baseline
    error = (measured - BUFFER_MIB) / BUFFER_MIB
    print(f"\nhost backend: baseline {baseline:.1f} MiB, peak {peak.peak_mib:.1f} MiB, measured "
          f"{measured:.1f} MiB of {BUFFER_MIB} MiB: error {100 * error:+.3f} %  ({peak.samples} samples)")
    assert abs(error) <= 0.05
    assert after < baseline + 0.1 * BUFFER_MIB, "the buffer should be back to the system after del"
    rows = monitor.read_samples(jd.gpu_mem_csv)
    assert rows[-1].job_mib is not None and rows[-1].job_mib < baseline + 0.1 * BUFFER_MIB   # release recorded
    assert rows[0].job_mib is not None and rows[0].job_mib < baseline + 0.1 * BUFFER_MIB
    assert all(r.backend == "host" for r in rows)
    (written,) = monitor.read_peaks(jd.peak_mem_csv)
    assert (written.peak_mib, written.peak_step, written.samples) == (peak.peak_mib, peak.peak_step, peak.samples)


SAMPLER_PROC = """
import sys, time
from launcher import monitor
s = monitor.Sampler(sys.argv[1], "node", ["0"], lambda: [int(sys.argv[2])], interval=0.02, backend="host",
                    metrics=False, peaks_every=3600).start()
print("started", flush=True)
time.sleep(60)
"""


def test_files_are_complete_up_to_the_last_sample_after_sigkill(tmp_path: Path) -> None:
    jd = JobDir(tmp_path / "job")
    proc = subprocess.Popen([sys.executable, "-c", SAMPLER_PROC, str(jd.root), str(psutil.Process().pid)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    text = jd.gpu_mem_csv.read_text()
    rows = monitor.read_samples(jd.gpu_mem_csv)
    assert text.endswith("\n") and len(rows) == text.count("\n") - 1 and len(rows) > 10
    # Written once at the first sample, then never again (peaks_every far away, no stop()): stale.
    (stale,) = monitor.read_peaks(jd.peak_mem_csv)
    assert stale.samples < len(rows)
    (peak,) = monitor.job_peaks(jd)   # rebuilt from the samples, which are newer
    assert peak.samples == len(rows) and peak.peak_mib == max(r.job_mib for r in rows)
