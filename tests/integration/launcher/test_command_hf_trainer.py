"""A real HF Trainer script (scripts/hf_train.py: Lisa's train.py style, PEFT LoRA, a tiny Llama) on
2 gloo ranks under `command`, broken from outside the way machines break it, restarts of restarts:

1. once its checkpoint-60 is whole, rank 1's script is SIGKILLed: a crash, restarted from the
   script's own newest whole checkpoint through `--resume_from_checkpoint`;
2. once that second attempt has saved a checkpoint of its own, both ranks' scripts are frozen
   (SIGSTOP: no output, no CPU, no files): a hang found by the signals, py-spy dumps, a third
   attempt from the newest checkpoint, which trains to the end.

The script knows nothing of the launcher; the test reaches its processes through the journal's
record of the ranks and checks each belongs to the run before signalling it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher import procs
from launcher.journal import Journal
from tests.integration.launcher.conftest import run_processes, start_detached, status, write_plan

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parent / "scripts" / "hf_train.py"
STEPS, SAVE = 240, 20


def tiny_model_and_data(tmp: Path) -> tuple[Path, Path]:
    """What a researcher's run points the script at: a model directory and an Alpaca-style file."""
    from methods.models import byte_tokenizer, tiny_model
    tok = byte_tokenizer()
    # 1.1 M parameters: about 10 steps a second on 2 CPU ranks, slow enough to be caught in the act
    model = tiny_model("llama", tok, {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4}, seed=0)
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    rows = [{"instruction": f"Add {i} and {i + 1}.", "output": str(2 * i + 1)} for i in range(64)]
    (tmp / "data.json").write_text(json.dumps(rows))
    return tmp / "model", tmp / "data.json"


def wait(pred, timeout: float, what: str):   # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def attempts(db: Path) -> list[dict]:
    j = Journal(db, readonly=True)
    try:
        return [dict(a) for a in j.attempts("sft")]
    finally:
        j.close()


def scripts_of(db: Path, run: str, attempt: int) -> dict[int, list[psutil.Process]]:
    """Rank -> its script's live processes, as the journal recorded them (the agents record what
    they find under each rank), each verified by start time and the run's marker: never a bare pid."""
    j = Journal(db, readonly=True)
    try:
        recs = [r for r in j.processes("sft", attempt) if r.role == "child"]
    finally:
        j.close()
    out: dict[int, list[psutil.Process]] = {}
    for r in recs:
        p = procs.Owned(r.pid, r.create_time).process(run)
        if p is not None:
            out.setdefault(r.rank, []).append(p)
    return out


def whole(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def test_an_hf_trainer_script_on_two_ranks_survives_a_kill_and_a_hang_from_its_own_checkpoints(
        tmp_path: Path, runs: Path) -> None:
    model, data = tiny_model_and_data(tmp_path)
    plan = write_plan(tmp_path, f"""
name: hf-command
jobs:
  sft:
    method: command
    params:
      argv: [{sys.executable}, {SCRIPT}, --model_name_or_path, {model}, --data_path, {data}, --output_dir, "{{dir}}/out",
             --max_steps, "{STEPS}", --save_steps, "{SAVE}", --save_total_limit, "3", --per_device_train_batch_size,
             "2", --logging_steps, "1", --learning_rate, "1e-3", --report_to, none, --use_cpu, --seed, "7"]
    resources: {{nodes: 1, gpus_per_node: 2}}
    checkpoint: {{glob: "out/checkpoint-*", resume_arg: [--resume_from_checkpoint, "{{checkpoint}}"]}}
    retry: {{max_restarts: 2, backoff: 0}}
    hang: {{startup: 300, step: 8}}
""")
    run = start_detached(plan, runs, "--simulate-gpus", "2")
    rd = runs / run
    db, out = rd / "run.db", rd / "jobs" / "sft" / "out"

    # 1. a kill: rank 1's script, once checkpoint-60 is whole
    wait(lambda: any(s >= 60 for s in whole(out)), 300, "checkpoint-60")
    (victim,) = wait(lambda: scripts_of(db, run, 1).get(1), 30, "rank 1's script on record")
    victim.send_signal(signal.SIGKILL)

    # 2. a hang: both ranks' scripts frozen once attempt 2 saved a checkpoint beyond its start
    a2 = wait(lambda: next((a for a in attempts(db) if a["n"] == 2 and a["state"] == "running"), None), 120,
              "attempt 2 running")
    start2 = a2["start_step"]
    assert start2 >= 60 and a2["resumed_from"].endswith(f"checkpoints/checkpoint-{start2}")
    wait(lambda: any(s > start2 for s in whole(out)), 300, "a checkpoint of attempt 2")
    frozen = [p for ps in wait(lambda: (lambda m: m if len(m) == 2 else None)(scripts_of(db, run, 2)), 30,
                                "both scripts of attempt 2 on record").values() for p in ps]
    assert len(frozen) == 2
    stopped_at = time.time()
    for p in frozen:
        p.send_signal(signal.SIGSTOP)

    st = wait(lambda: (lambda s: s if s["state"] != "running" else None)(status(runs, run)), 400, "the run's end")
    assert st["state"] == "succeeded", json.dumps(st, indent=1)[-3000:]
    a1, a2, a3 = attempts(db)
    assert (a1["failure"], a2["failure"], a3["state"]) == ("crash", "hang", "succeeded")
    assert "exited with 137 (killed by SIGKILL)" in a1["detail"]     # the wrapper passes the script's death on
    assert "signals idle:" in a2["detail"]
    assert a2["ended"] - stopped_at >= 8   # not before the step timeout; how soon after is bin/bench's to measure
    print(f"hang of both ranks found and killed {a2['ended'] - stopped_at:.1f} s after the freeze (step timeout 8 s)")
    assert a3["start_step"] > start2 and a3["resumed_from"].endswith(f"checkpoint-{a3['start_step']}")

    logs = rd / "jobs" / "sft" / "logs"
    assert "py-spy dump of rank 1" in (logs / "attempt-2" / "rank-1.log").read_text()
    for n, a in ((2, a2), (3, a3)):
        head = (logs / f"attempt-{n}" / "rank-0.log").read_text().split("\n", 1)[0]
        resumed = out / f"checkpoint-{a['start_step']}"
        assert f"'--resume_from_checkpoint', '{resumed}'" in head
    # The Trainer carried its own state across both restarts: one log entry per step, none twice.
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged == list(range(1, STEPS + 1))
    assert (out / "adapter_model.safetensors").exists()
    deadline = time.time() + 15
    while run_processes(run) and time.time() < deadline:
        time.sleep(0.3)
    assert run_processes(run) == [], "processes of the run survived it"
