"""Each activity signal on its own keeps a script alive, and its stopping is found within the timeout.

Four scripts side by side, each kept busy by one signal only for 12 s under a 5 s step timeout
(writing output, growing a file, burning CPU, touching its own heartbeat file), then idle for good:
none may be killed while its one signal moves, and each must be found hung, never before the
timeout after it stopped. The measured latencies (the timeout plus the wrapper's one-second
sample and the controller's poll) are printed: the detection times per signal the README quotes.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from launcher.journal import Journal
from tests.integration.launcher.conftest import launch, status, write_plan

pytestmark = pytest.mark.integration

BUSY_S, TIMEOUT_S = 12, 5

# argv[1]: the signal to keep moving; argv[2]: the job directory. Every variant ends by writing the
# time it went idle (that write is its last activity), then sleeps: no output, files, CPU or beat.
SCRIPT = """
import json, os, sys, time
what, out = sys.argv[1], sys.argv[2]
end = time.time() + float(sys.argv[3])
while time.time() < end:
    if what == "output":
        print("working on it", flush=True)        # no number in it: activity, not steps
        time.sleep(0.5)
    elif what == "files":
        with open(os.path.join(out, "growing.bin"), "ab") as f:
            f.write(b"x" * 100)
        time.sleep(0.5)
    elif what == "cpu":
        sum(i * i for i in range(100_000))
    elif what == "heartbeat":
        with open(os.environ["SL_HEARTBEAT_FILE"] + ".tmp", "w") as f:
            json.dump({"rank": 0, "step": 0, "total_steps": 0, "phase": "training"}, f)
        os.replace(os.environ["SL_HEARTBEAT_FILE"] + ".tmp", os.environ["SL_HEARTBEAT_FILE"])
        time.sleep(0.5)
with open(os.path.join(out, "idle_since"), "w") as f:
    f.write(repr(time.time()))
time.sleep(600)
"""

SIGNALS = ("output", "files", "cpu", "heartbeat")


def test_each_signal_alone_keeps_a_script_alive_and_its_stop_is_found_in_time(tmp_path: Path, runs: Path) -> None:
    (tmp_path / "busy.py").write_text(textwrap.dedent(SCRIPT))
    jobs = "".join(f"""
  {s}:
    params: {{argv: [{sys.executable}, busy.py, {s}, "{{dir}}", "{BUSY_S}"]}}
""" for s in SIGNALS)
    plan = write_plan(tmp_path, f"""
name: command-signals
defaults:
  method: command
  resources: {{nodes: 1, gpus_per_node: 1}}
  retry: {{max_restarts: 0}}
  hang: {{startup: 60, step: {TIMEOUT_S}}}
jobs:{jobs}""")
    out = launch(plan, runs, "--simulate-gpus", str(len(SIGNALS)), timeout=300)
    assert out.returncode != 0   # every job ends hung, by design
    st = status(runs)
    run = Path(st["dir"])
    j = Journal(run / "run.db", readonly=True)
    latencies = {}
    for s in SIGNALS:
        (a,) = j.attempts(s)
        detected = next(e for e in j.events(s) if e["kind"] == "detected")
        idle_since = float((run / "jobs" / s / "idle_since").read_text())
        assert a["failure"] == "hang", (s, a["detail"])
        assert idle_since - a["started"] >= BUSY_S - 1, f"{s}: killed while it was busy"
        latencies[s] = detected["time"] - idle_since
        # never before the timeout ran out after the last movement; how soon after is measured (printed
        # here, and by bin/bench), not asserted: a loaded machine only makes it later
        assert latencies[s] >= TIMEOUT_S, (s, latencies[s], detected["message"])
    j.close()
    print("detection after the last movement, step timeout "
          f"{TIMEOUT_S}s: " + ", ".join(f"{s} {v:.1f}s" for s, v in latencies.items()))
