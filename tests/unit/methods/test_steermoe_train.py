"""SteerMoE training: only the selected expert slices move (bitwise), the batch sampler, weight decay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launcher.atomic import read_jsonl
from launcher.layout import JobDir
from launcher.spec import DataSource, ModelSpec
from methods import steermoe
from methods.models import byte_tokenizer, tiny_model
from methods.steermoe import AnalysisBatchSampler, MODEL_DIR, freeze_all_but_experts, frozen_fingerprint
from methods.steermoe_analysis import EXPERTS_FILE
from tests.helpers import DATA, make_job, tiny_training

SELECTED = [(0, 2), (1, 5), (1, 0)]


def test_freeze_leaves_only_selected_layers_expert_tensors_trainable():
    model = tiny_model("olmoe", byte_tokenizer(), {}, seed=1)
    setup = freeze_all_but_experts(model, SELECTED)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"model.layers.{layer}.mlp.experts.{w}" for layer in (0, 1) for w in ("gate_up_proj", "down_proj"))
    assert setup.masks["model.layers.1.mlp.experts.down_proj"].nonzero().flatten().tolist() == [0, 5]
    e = model.config.num_experts
    per_expert = sum(p[0].numel() for n, p in model.named_parameters() if n.endswith("experts.gate_up_proj")) // 2 \
        + sum(p[0].numel() for n, p in model.named_parameters() if n.endswith("experts.down_proj")) // 2
    assert setup.trainable_elements(model) == 3 * per_expert and e == 8
    with pytest.raises(ValueError, match="nothing to train"):
        freeze_all_but_experts(model, [])
    with pytest.raises(ValueError, match="layer 7"):
        freeze_all_but_experts(tiny_model("olmoe", byte_tokenizer(), {}, seed=1), [(7, 0)])


def test_gradient_hook_zeroes_non_selected_slices():
    tok = byte_tokenizer()
    model = tiny_model("olmoe", tok, {"num_experts_per_tok": 8}, seed=1)  # every expert gets tokens
    setup = freeze_all_but_experts(model, SELECTED)
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
            continue
        keep = setup.masks[name]
        assert (p.grad[~keep] == 0).all() and not torch.signbit(p.grad[~keep]).any()  # exact +0
        assert all(p.grad[e].abs().sum() > 0 for e in keep.nonzero().flatten().tolist())


def test_fingerprint_sees_a_one_bit_change():
    model = tiny_model("olmoe", byte_tokenizer(), {}, seed=1)
    setup = freeze_all_but_experts(model, SELECTED)
    before = frozen_fingerprint(model, setup)
    assert "model.layers.0.mlp.experts.gate_up_proj[3]" in before and "model.layers.0.mlp.experts.gate_up_proj[2]" not in before
    with torch.no_grad():
        w = model.model.layers[0].mlp.experts.down_proj
        w[4, 0, 0] = torch.nextafter(w[4, 0, 0], torch.tensor(1.0))
    after = frozen_fingerprint(model, setup)
    assert [k for k in before if before[k] != after[k]] == ["model.layers.0.mlp.experts.down_proj[4]"]
    with torch.no_grad():
        model.model.layers[0].mlp.experts.down_proj[2].add_(1.0)  # selected slice: not part of the invariant
    assert frozen_fingerprint(model, setup) == after


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_keeps_batches_whole_and_shards_disjointly(world):
    batches = [list(range(i * 4, i * 4 + 4)) for i in range(7)]
    samplers = [AnalysisBatchSampler(batches, rank=r, world_size=world, shuffle=True, seed=3) for r in range(world)]
    for epoch in (0, 1):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            got = list(s)
            assert len(got) == len(s) == 7 // world
            assert all(b in batches for b in got)  # whole batches, inner order kept
            per_rank.append(got)
        flat = [tuple(b) for got in per_rank for b in got]
        assert len(set(flat)) == len(flat) == (7 // world) * world  # disjoint across ranks
        # Step t on every rank comes from the same epoch order: positions t*W .. t*W + W-1.
        order = samplers[0].order()
        for t in range(7 // world):
            assert [per_rank[r][t] for r in range(world)] == [batches[order[t * world + r]] for r in range(world)]
    s0 = AnalysisBatchSampler(batches, shuffle=True, seed=3)
    orders = set()
    for epoch in range(4):
        s0.set_epoch(epoch)
        orders.add(tuple(s0.order()))
    assert len(orders) > 1  # reshuffled between epochs
    assert list(AnalysisBatchSampler(batches, shuffle=False)) == batches
    with pytest.raises(ValueError, match="one size"):
        AnalysisBatchSampler([[0, 1], [2]])


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


def steermoe_job(root: Path, **params):
    return make_job(root, job="steermoe", method="steermoe", model=ModelSpec(tiny="olmoe", seed=2),
                    params={"template": "chat", "safe_per_batch": 2, "unsafe_per_batch": 2, "top_n": 3,
                            "tokens": "response", **params},
                    data={"train": DataSource(source=str(DATA / "steermoe_pairs_mini.jsonl"), limit=8)},
                    training=tiny_training(batch_size=4, lora=None, weight_decay=0.1, epochs=2, lr=5e-2, max_length=128))


def test_training_moves_only_selected_slices_bitwise(tmp_path):
    """AdamW with weight decay 0.1 in the plan: frozen tensors and non-selected slices must still be
    bitwise equal to the initial model in the saved result."""
    from transformers import OlmoeForCausalLM

    assert steermoe.run(steermoe_job(tmp_path)) == 0
    jd = JobDir(tmp_path)
    result = json.loads(jd.result.read_text())
    assert result["metrics"]["global_step"] == 8.0 and result["metrics"]["frozen_changed"] == 0.0  # 4 batches x 2 epochs
    analysis = json.loads((tmp_path / EXPERTS_FILE).read_text())
    selected = {(s["layer"], s["expert"]) for s in analysis["selected"]}
    assert len(selected) == 3
    # save_pretrained writes experts one by one (the hub layout); loading fuses them again.
    trained = OlmoeForCausalLM.from_pretrained(jd.root / MODEL_DIR, dtype=torch.float32).state_dict()
    initial = tiny_model("olmoe", byte_tokenizer(), {}, seed=2).state_dict()
    assert set(trained) == set(initial)
    moved = set()
    for name, w in trained.items():
        ref = initial[name]
        if ".mlp.experts." not in name:
            assert torch.equal(w, ref), name
            continue
        layer = int(name.split(".layers.")[1].split(".")[0])
        for e in range(w.shape[0]):
            if (layer, e) in selected:
                if not torch.equal(w[e], ref[e]):
                    moved.add((layer, e))
            else:
                assert torch.equal(w[e], ref[e]), (name, e)
    assert moved == selected  # and every selected expert did train
    seen = read_jsonl(jd.seen / "samples-rank-0.attempt-1.jsonl")
    assert all(len(s["ids"]) == 4 and [i.split(":")[0] for i in s["ids"]] == ["safe", "safe", "unsafe", "unsafe"]
               for s in seen)
    batches = {tuple(b) for b in analysis["batches"]}
    assert all(tuple(s["ids"]) in batches for s in seen)


def test_training_reads_an_analysis_file_and_checks_its_batches(tmp_path):
    first = tmp_path / "a"
    assert steermoe.run(steermoe_job(first, save_model=False)) == 0
    reuse = steermoe_job(tmp_path / "b", save_model=False)
    reuse = reuse.model_copy(update={"data": {**reuse.data, "experts": DataSource(source=str(first / EXPERTS_FILE))}})
    assert steermoe.run(reuse) == 0
    assert not (tmp_path / "b" / EXPERTS_FILE).exists()  # no second analysis
    other = steermoe_job(tmp_path / "c", safe_per_batch=1, unsafe_per_batch=3)
    other = other.model_copy(update={"data": {**other.data, "experts": DataSource(source=str(first / EXPERTS_FILE))}})
    with pytest.raises(ValueError, match="other batches"):
        steermoe.run(other)
    with pytest.raises(ValueError, match="batch_size must be"):
        steermoe.run(steermoe_job(tmp_path / "d", safe_per_batch=3))


def test_weight_decay_is_zero_on_masked_expert_tensors(tmp_path):
    from methods.core.training import training_arguments
    from methods.data import Record, SFTCollator, SFTDataset

    model = tiny_model("olmoe", byte_tokenizer(), {}, seed=1)
    setup = freeze_all_but_experts(model, SELECTED)
    job = steermoe_job(tmp_path)
    ds = SFTDataset.from_records([Record("q", "a", sample_id="safe:0")] * 4, "alpaca", byte_tokenizer(), 64)
    trainer = steermoe.SteerMoETrainer(model=model, args=training_arguments(job, "fp32", False), train_dataset=ds,
                                       data_collator=SFTCollator(0), analysis_batches=[[0, 1, 2, 3]],
                                       shuffle_batches=False, no_decay=list(setup.masks))
    opt = trainer.create_optimizer()
    groups = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert groups.get(0.1, 0) == 0 and groups[0.0] == sum(p.numel() for p in model.parameters() if p.requires_grad)
