"""Lisa on a tiny seeded Llama in one process, against independent reference computations:
the proximal term and its gradient, the drift logs, the schedule seen in training, SFT equivalence,
and an exact resume from a checkpoint's Lisa state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from launcher import checkpoints as ckpt
from launcher.atomic import read_jsonl
from launcher.layout import JobDir
from launcher.spec import CheckpointSpec, DataSource, LoraSpec
from methods import lisa, sft
from methods.lisa_state import STATE_FILE, tensor_digest
from tests.helpers import DATA, make_job, tiny_training

NO_DROPOUT = LoraSpec(r=4, alpha=8, dropout=0.0)


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


def lisa_job(job_dir: Path, steps: int = 12, every: int = 100, **params):
    p = {"template": "alpaca", "rho": 1.0, "alignment_step": 2, "finetune_step": 3, "guide_data_num": 10, **params}
    return make_job(job_dir, method="lisa", params=p,
                    data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=32),
                          "guide": DataSource(source=str(DATA / "safe_mini.jsonl"))},
                    training=tiny_training(max_steps=steps, batch_size=2, lr=1e-2, lora=NO_DROPOUT),
                    checkpoint=CheckpointSpec(every=every, keep=2))


class Capture(TrainerCallback):
    """theta (the trainable tensors) before training and after every optimizer step."""

    def __init__(self, trainer):
        self.trainer, self.theta = trainer, {}

    def grab(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainer.trainable()}

    def on_train_begin(self, args, state, control, **kw):
        self.theta.setdefault(state.global_step, self.grab())

    def on_step_end(self, args, state, control, **kw):
        self.theta[state.global_step] = self.grab()


def train_captured(job) -> tuple[lisa.LisaTrainer, Capture]:
    _, trainer = lisa.build(job)
    cap = Capture(trainer)
    trainer.add_callback(cap)
    trainer.train(resume_from_checkpoint=job.resume_from)
    return trainer, cap


def sq(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """sum ||a - b||^2 the repo's way, torch.norm(...)**2 per tensor, in float64."""
    return sum(float(torch.norm(a[n].double() - b[n].double()) ** 2) for n in a)


def drift_logs(metrics: list[dict], after: int = 0) -> list[tuple[int, str, float]]:
    return [(m["step"], k, v) for m in metrics if m["step"] > after for k, v in m["extra"].items() if "drift" in k]


def steps_of(metrics: list[dict]) -> dict[int, dict]:
    return {m["step"]: m for m in metrics if m["loss"] is not None}


def test_proximal_term_value_gradient_and_anchor(tmp_path):
    _, trainer = lisa.build(lisa_job(tmp_path, rho=2.5))
    model = trainer.model
    model.train()  # LoRA dropout is 0: train mode is deterministic
    named = trainer.trainable()
    g = torch.Generator().manual_seed(1)
    anchors = {k: {n: p.detach() + 0.05 * torch.randn(p.shape, generator=g) for n, p in named}
               for k in ("alignment", "finetune")}
    trainer.alignment_weights, trainer.finetune_weights = anchors["alignment"], anchors["finetune"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])

    def loss_and_grads(mode: str, proximal: bool):
        trainer.step_mode, trainer.step_proximal = mode, proximal
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in named}

    ce, ce_grads = loss_and_grads("finetune", False)
    with torch.no_grad():  # the plain CE of the batch, straight from the model
        ref_ce = model(**{k: v for k, v in batch.items() if k != "sample_index"}).loss
    assert ce == ref_ce
    for mode, anchor_key in (("alignment", "finetune"), ("finetune", "alignment")):
        anchor = anchors[anchor_key]
        total, grads = loss_and_grads(mode, True)
        ref_prox = 2.5 / 2 * sum(torch.norm(p.detach() - anchor[n]) ** 2 for n, p in named)
        assert float(total - ce) == pytest.approx(float(ref_prox), rel=1e-5)
        assert trainer.last_proximal == pytest.approx(float(ref_prox), rel=1e-6)
        for n, p in named:  # gradient of the term: rho * (theta - anchor of the state left behind)
            torch.testing.assert_close(grads[n] - ce_grads[n], 2.5 * (p.detach() - anchor[n]), rtol=1e-4, atol=1e-6)

    # Accumulating 2 micro-batches with the CE normalised by the step's token count (the Trainer
    # then sums the micro-batch losses): each micro-batch carries half the term, once per step.
    assert trainer.model_accepts_loss_kwargs
    trainer.current_gradient_accumulation_steps = 2
    n_items = int((batch["labels"][:, 1:] != -100).sum()) * 2
    trainer.step_mode, trainer.step_proximal = "finetune", False
    ce_part = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items).detach()
    trainer.step_proximal = True
    with_prox = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items).detach()
    assert float(with_prox - ce_part) == pytest.approx(trainer.last_proximal / 2, rel=1e-5)


def test_schedule_drift_and_proximal_in_training(tmp_path):
    job = lisa_job(tmp_path, steps=12, every=5)
    trainer, cap = train_captured(job)
    jd = JobDir(tmp_path)
    metrics = read_jsonl(jd.metrics)
    per_step = steps_of(metrics)
    theta = cap.theta

    # alignment 2, finetune 3: steps 1-2 align, 3-5 fine-tune, 6-7 align, 8-10 fine-tune, 11-12 align.
    aligning = [k for k in range(1, 13) if per_step[k]["extra"]["lisa_alignment"] == 1.0]
    assert aligning == [1, 2, 6, 7, 11, 12]
    seen = {r["step"]: r["ids"] for r in read_jsonl(jd.seen / "samples-rank-0.attempt-1.jsonl")}
    for k in range(1, 13):
        role = "guide" if k in aligning else "train"
        assert all(i.startswith(role + ":") for i in seen[k]), (k, seen[k])

    # Drift logged at each switch: the squared distance moved by the state that just ended.
    drifts = drift_logs(metrics)
    assert [(s, k) for s, k, _ in drifts] == [(2, "alignment_drift_to_consensus"), (5, "finetuning_drift_to_consensus"),
                                              (7, "alignment_drift_to_consensus"), (10, "finetuning_drift_to_consensus")]
    starts = [0, 2, 5, 7, 10]
    for (step, _, value), begin in zip(drifts, starts):
        assert value == pytest.approx(sq(theta[step], theta[begin]), rel=1e-6)
        assert value > 0

    # Proximal term: gated until steps > 1.2, zero on the step right after a switch, otherwise
    # (rho/2) ||theta_before_step - theta_at_state_start||^2.
    state_start = {k: max(b for b in starts if b < k) for k in range(1, 13)}
    for k in range(1, 13):
        got = per_step[k]["extra"]["lisa_proximal"]
        if k - 1 <= 1.2:
            assert got == 0.0
        elif state_start[k] == k - 1:
            assert got == 0.0  # just switched: theta is its own anchor
        else:
            assert got == pytest.approx(0.5 * sq(theta[k - 1], theta[state_start[k]]), rel=1e-5)
            assert got > 0

    # The checkpoint after step 10 carries that moment's state (the switch comes before step 11):
    # finetune since step 8, clock 3; alignment_weights = theta_7 and finetune_weights = theta_5.
    st = torch.load(jd.checkpoints / "checkpoint-10" / STATE_FILE, weights_only=True)
    assert (st["mode"], st["steps"], st["clock"], st["switches"], st["global_step"]) == ("finetune", 10, 3, 3, 10)
    assert tensor_digest(st["alignment_weights"]) == tensor_digest(theta[7])
    assert tensor_digest(st["finetune_weights"]) == tensor_digest(theta[5])
    assert st["guide_position"] == {"epoch": 0, "batch": 4}  # steps 1, 2, 6, 7 drew guide batches
    assert ckpt.is_complete(jd.checkpoints / "checkpoint-10")
    assert trainer.schedule.steps == 12


@pytest.mark.parametrize("disable", [{"guide_data_num": 0}, {"alignment_step": 0}])
def test_without_alignment_and_rho_zero_it_is_exactly_sft(tmp_path, disable):
    common = dict(data={"train": DataSource(source=str(DATA / "sst2_mini.jsonl"), limit=24),
                        "guide": DataSource(source=str(DATA / "safe_mini.jsonl"))},
                  training=tiny_training(max_steps=10, batch_size=2, lr=1e-2), checkpoint=CheckpointSpec(every=100, keep=2))
    sft_dir, lisa_dir = tmp_path / "sft", tmp_path / "lisa"
    assert sft.run(make_job(sft_dir, params={"template": "alpaca"}, **common)) == 0
    params = {"template": "alpaca", "rho": 0, "alignment_step": 2, "finetune_step": 3, "guide_data_num": 10, **disable}
    assert lisa.run(make_job(lisa_dir, method="lisa", params=params, **common)) == 0
    ref, got = steps_of(read_jsonl(JobDir(sft_dir).metrics)), steps_of(read_jsonl(JobDir(lisa_dir).metrics))
    assert sorted(got) == sorted(ref) == list(range(1, 11))
    assert [got[k]["loss"] for k in ref] == [ref[k]["loss"] for k in ref]  # bitwise, step by step
    assert all(got[k]["extra"]["lisa_alignment"] == 0.0 for k in got)
    from safetensors.torch import load_file
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (sft_dir, lisa_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    result = json.loads((lisa_dir / "result.json").read_text())
    assert result["metrics"]["lisa_switches"] == 0.0


def test_without_guide_rho_still_pulls_toward_theta0(tmp_path):
    """The repo keeps the proximal term in the finetune state with alignment_weights = theta_0, so
    guide_data_num 0 with rho > 0 is SFT plus (rho/2)||theta - theta_0||^2 after the warm-up."""
    trainer, cap = train_captured(lisa_job(tmp_path, steps=10, guide_data_num=0, rho=3))
    per_step = steps_of(read_jsonl(JobDir(tmp_path).metrics))
    for k in range(1, 11):
        expected = 1.5 * sq(cap.theta[k - 1], cap.theta[0]) if k - 1 > 1.0 else 0.0
        assert per_step[k]["extra"]["lisa_proximal"] == pytest.approx(expected, rel=1e-5)
    assert per_step[10]["extra"]["lisa_proximal"] > 0
    assert trainer.schedule.switches == 0


def test_resume_restores_the_lisa_state_and_replays_exactly(tmp_path):
    first = lisa_job(tmp_path, steps=12, every=4)
    train_captured(first)
    jd = JobDir(tmp_path)
    losses_1 = {k: m["loss"] for k, m in steps_of(read_jsonl(jd.metrics)).items()}
    drifts_1 = drift_logs(read_jsonl(jd.metrics), after=8)
    saved = torch.load(jd.checkpoints / "checkpoint-8" / STATE_FILE, weights_only=True)

    second = first.model_copy(update={"attempt": 2, "resume_from": str(jd.checkpoints / "checkpoint-8")})
    _, trainer = lisa.build(second)
    s = trainer.schedule
    assert (s.mode, s.steps, s.clock, s.switches) == (saved["mode"], saved["steps"], saved["clock"], saved["switches"])
    assert (trainer.guide.position.epoch, trainer.guide.position.batch) == (0, 4)  # steps 1, 2, 6, 7 aligned
    for key in ("alignment_weights", "finetune_weights"):
        got = getattr(trainer, key)
        assert all(torch.equal(got[n], saved[key][n]) for n in saved[key])  # bitwise
    restored = json.loads((jd.seen / "lisa-restored-rank-0.attempt-2.json").read_text())
    assert restored["alignment_digest"] == tensor_digest(saved["alignment_weights"])
    assert (restored["mode"], restored["steps"]) == (saved["mode"], 8)

    trainer.train(resume_from_checkpoint=second.resume_from)
    metrics_2 = [m for m in read_jsonl(jd.metrics) if m["attempt"] == 2]
    losses_2 = {m["step"]: m["loss"] for m in metrics_2 if m["loss"] is not None}
    assert sorted(losses_2) == [9, 10, 11, 12]
    for k, v in losses_2.items():
        assert v == pytest.approx(losses_1[k], rel=1e-6, abs=1e-7)
    drifts_2 = drift_logs(metrics_2, after=8)
    assert [(s, k) for s, k, _ in drifts_2] == [(s, k) for s, k, _ in drifts_1] == [(10, "finetuning_drift_to_consensus")]
    assert drifts_2[0][2] == pytest.approx(drifts_1[0][2], rel=1e-6)
