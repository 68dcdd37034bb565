"""Plan loading and validation: shipped plans, every error kind, matrices, --set, defaults, ds configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.plan import HUB_RE, JobConfig, Problem, load_plan
from launcher.resources import ClusterShape
from launcher.spec import TrainingSpec
from methods.params import LisaParams, SFTParams, SyntheticParams
from methods.registry import METHODS
from tests.helpers import fake_lisa_checkout

REPO = Path(__file__).resolve().parents[3]
PLANS = sorted((REPO / "plans").glob("*.yaml"))

SFT = """
    name: t
    defaults:
      model: {tiny: llama}
    jobs:
      sft:
        method: sft
        data: {train: train.jsonl}
"""

KNOWN = ", ".join(sorted(METHODS))


def fields(model) -> str:
    return ", ".join(model.model_fields)


REASON_DATA = ("(a local path relative to the plan, or a full hub name such as stanfordnlp/sst2; "
               "a bare name like 'sst2' is ambiguous)")


def by_key(problems: list[Problem]) -> dict[str, str]:
    """key -> message; each key must appear once (no duplicate reports)."""
    out: dict[str, str] = {}
    for p in problems:
        assert p.key not in out, f"duplicate problem for {p.key}: {problems}"
        out[p.key] = p.message
    return out


# --------------------------------------------------------------------------- shipped plans

def test_there_are_shipped_plans():
    assert {p.name for p in PLANS} >= {"smoke.yaml", "pipeline_synthetic.yaml"}


@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_every_shipped_plan_validates(path, tmp_path):
    sets = []
    if path.name == "lisa_official_command.yaml":   # runs in a checkout of the official repository: a stand-in
        fake_lisa_checkout(tmp_path)
        sets = [f"defaults.params.root={tmp_path}"]
    plan = load_plan(path, sets=sets, cluster=ClusterShape.single(2))
    assert plan.jobs
    assert plan.file == path.resolve()
    for job in plan.jobs.values():
        for role, d in job.data.items():  # local data resolved to absolute, existing paths; or a full hub name
            if "${" not in d.source and not HUB_RE.match(d.source):
                assert Path(d.source).is_absolute() and Path(d.source).exists(), (job.name, role, d.source)


def test_pipeline_synthetic_shape():
    plan = load_plan(REPO / "plans" / "pipeline_synthetic.yaml", cluster=ClusterShape.single(2))
    assert list(plan.jobs) == ["stage1_align", "stage1_hs", "lisa", "sft_baseline", "lisa_hs", "lisa_fa", "sft_hs", "sft_fa"]
    assert plan.jobs["lisa_fa"].needs == ("lisa",)
    assert plan.jobs["stage1_hs"].method_params["steps"] == 5        # job value wins over defaults
    assert plan.jobs["lisa"].method_params["steps"] == 20            # from defaults
    assert plan.jobs["lisa"].method_params["step_time"] == 0.05
    assert plan.jobs["lisa"].config.checkpoint.every == 5
    assert plan.jobs["lisa"].ds_config is None                       # synthetic uses no DeepSpeed


# --------------------------------------------------------------------------- error kinds

def test_unknown_top_level_key(problems, tmp_path):
    got = problems("""
        name: t
        defualts: {}
        jobs:
          a: {method: synthetic}
    """)
    assert got == [Problem(str(tmp_path / "plan.yaml"), "defualts",
                           "unknown key 'defualts' (did you mean 'defaults'?); expected one of name, description, defaults, jobs")]


def test_unknown_job_level_key(problems):
    got = by_key(problems(SFT + "        trainin: {lr: 0.1}\n"))
    assert got == {"jobs.sft.trainin": "unknown key 'trainin' (did you mean 'training'?); expected one of "
                                       + ", ".join(JobConfig.model_fields)}
    assert "training" in got["jobs.sft.trainin"] and "needs" in got["jobs.sft.trainin"]


def test_unknown_nested_key(problems):
    got = by_key(problems(SFT + "        training: {lrr: 0.1}\n"))
    assert got == {"jobs.sft.training.lrr": "unknown key 'lrr' (did you mean 'lr'?); expected one of "
                                            + ", ".join(TrainingSpec.model_fields)}
    got = by_key(problems(SFT + "        training: {lora: {rank: 4}}\n"))
    assert list(got) == ["jobs.sft.training.lora.rank"]
    assert got["jobs.sft.training.lora.rank"].endswith("expected one of r, alpha, dropout, target_modules")


def test_unknown_key_in_a_data_source_points_at_the_key(problems):
    got = by_key(problems(SFT.replace("{train: train.jsonl}", "{train: {sourc: train.jsonl}}")))
    assert got == {"jobs.sft.data.train.source": "required key is missing",
                   "jobs.sft.data.train.sourc": "unknown key 'sourc' (did you mean 'source'?); "
                                                "expected one of source, split, limit, subset"}


@pytest.mark.parametrize("snippet,key,message", [
    ("training: {batch_size: two}", "jobs.sft.training.batch_size",
     "Input should be a valid integer, unable to parse string as an integer (got 'two')"),
    ("resources: {gpus_per_node: 0}", "jobs.sft.resources.gpus_per_node",
     "Input should be greater than or equal to 1 (got 0)"),
    ("needs: lisa", "jobs.sft.needs", "Input should be a valid list (got 'lisa')"),
    ("training: {scheduler: cosinee}", "jobs.sft.training.scheduler",
     "Input should be 'constant', 'cosine', 'linear' or 'constant_with_warmup' (got 'cosinee')"),
    ("hang: {step: soon}", "jobs.sft.hang.step", "expected seconds (a number > 0) or auto (got 'soon')"),
    ("checkpoint: {keep: 1}", "jobs.sft.checkpoint.keep", "Input should be greater than or equal to 2 (got 1)"),
    ("model: {tiny: llama, path: x}", "jobs.sft.model", "give exactly one of path, gguf, tiny (got ['path', 'tiny'])"),
])
def test_wrong_type(problems, snippet, key, message):
    assert by_key(problems(SFT + f"        {snippet}\n")) == {key: message}


def test_unknown_method(problems, tmp_path):
    got = problems("""
        jobs:
          lisa: {method: lisaa}
    """)
    assert got == [Problem(str(tmp_path / "plan.yaml"), "jobs.lisa.method",
                           f"unknown method 'lisaa'; expected one of {KNOWN}")]


def test_lisa_param_typo(problems):
    got = by_key(problems("""
        defaults: {model: {tiny: llama}}
        jobs:
          lisa:
            method: lisa
            data: {train: train.jsonl, guide: harmful.jsonl}
            params: {rhoo: 1, alignment_step: 100}
    """))
    assert got == {"jobs.lisa.params.rhoo": f"unknown key 'rhoo' (did you mean 'rho'?); expected one of {fields(LisaParams)}"}
    assert "rho, alignment_step, finetune_step, guide_data_num" in got["jobs.lisa.params.rhoo"]


def test_method_param_typo(problems):
    got = by_key(problems(SFT + "        params: {rhoo: 1}\n"))
    assert got == {"jobs.sft.params.rhoo": f"unknown key 'rhoo'; expected one of {fields(SFTParams)}"}
    got = by_key(problems(SFT + "        params: {poison_rato: 0.1}\n"))
    assert got["jobs.sft.params.poison_rato"].startswith("unknown key 'poison_rato' (did you mean 'poison_ratio'?)")
    got = by_key(problems(SFT + "        params: {poison_ratio: 2}\n"))
    assert got == {"jobs.sft.params.poison_ratio": "Input should be less than or equal to 1 (got 2)"}


def test_unknown_needs(problems):
    got = by_key(problems("""
        jobs:
          a: {method: synthetic}
          b: {method: synthetic, needs: [a, zz]}
    """))
    assert got == {"jobs.b.needs": "unknown job 'zz' in needs; jobs are a, b"}


def test_dependency_cycle_shows_the_cycle(problems):
    got = by_key(problems("""
        jobs:
          a: {method: synthetic, needs: [c]}
          b: {method: synthetic, needs: [a]}
          c: {method: synthetic, needs: [b]}
          free: {method: synthetic}
    """))
    assert got == {"jobs.a.needs": "dependency cycle: a -> b -> c -> a"}


def test_more_gpus_than_any_node(problems):
    got = by_key(problems(SFT + "        resources: {gpus_per_node: 4}\n"))
    assert got == {"jobs.sft.resources": "gpus_per_node 4 is more GPUs than any node has "
                                         "(largest: 2; cluster: 1 node (2 GPUs))"}


def test_resources_not_checked_without_a_cluster(load):
    plan = load(SFT + "        resources: {gpus_per_node: 4}\n", cluster=None)
    assert plan.jobs["sft"].config.resources.world_size == 4


def test_missing_data_file(problems, tmp_path):
    got = by_key(problems(SFT.replace("train.jsonl", "nothere.jsonl")))
    assert got == {"jobs.sft.data.train": f"missing data file {(tmp_path / 'nothere.jsonl').resolve()} {REASON_DATA}"}


def test_bare_hub_name_is_ambiguous_but_full_hub_name_is_accepted(problems, load, tmp_path):
    got = by_key(problems(SFT.replace("train.jsonl", "sst2")))
    assert got == {"jobs.sft.data.train": f"missing data file {(tmp_path / 'sst2').resolve()} {REASON_DATA}"}
    plan = load(SFT.replace("train.jsonl", "stanfordnlp/sst2"))
    assert plan.jobs["sft"].data["train"].source == "stanfordnlp/sst2"


def test_missing_data_role_and_extra_role(problems):
    got = by_key(problems("""
        defaults: {model: {tiny: llama}}
        jobs:
          sft: {method: sft, data: {harmful: harmful.jsonl, guide: train.jsonl}}
    """))
    assert got == {"jobs.sft.data.train": "method sft needs data role 'train'",
                   "jobs.sft.data.guide": "method sft takes no data role 'guide'; expected "
                                          + ", ".join(sorted(METHODS["sft"].required_data + METHODS["sft"].optional_data))}


def test_missing_model(problems):
    got = by_key(problems("""
        jobs:
          sft: {method: sft, data: {train: train.jsonl}}
    """))
    assert got == {"jobs.sft.model": "method sft needs a model (path, gguf or tiny)"}


def test_missing_ds_config(problems):
    got = by_key(problems(SFT + "        deepspeed: zero9\n"))
    assert got == {"jobs.sft.deepspeed": "missing ds config 'zero9': expected one of zero1, zero2, zero3, "
                                         "zero3_offload or a path to a JSON file"}


def test_ds_config_that_is_not_json(problems, plan_file, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    got = by_key(problems(SFT + "        deepspeed: bad.json\n"))
    assert list(got) == ["jobs.sft.deepspeed"]
    assert got["jobs.sft.deepspeed"].startswith(f"{tmp_path.resolve() / 'bad.json'} is not valid JSON:")


REFS = """
    defaults: {model: {tiny: llama}}
    jobs:
      up: {method: synthetic}
      stage1: {method: sft, data: {train: train.jsonl}}
      down:
        method: sft
        data: {train: train.jsonl}
        model: {tiny: llama, adapter: "ADAPTER"}
        needs: NEEDS
"""


@pytest.mark.parametrize("adapter,needs,message", [
    ("${up.dir}", "[]", "${up.dir}: add 'up' to needs so it runs first"),
    ("${up.adapter}", "[up]", "${up.adapter}: synthetic jobs offer " + ", ".join(METHODS["synthetic"].outputs)),
    ("${stage1.bogus}", "[stage1]", "${stage1.bogus}: sft jobs offer " + ", ".join(METHODS["sft"].outputs)),
    ("${nope.adapter}", "[up]", "${nope.adapter}: unknown job 'nope'"),
])
def test_bad_output_reference(problems, adapter, needs, message):
    got = by_key(problems(REFS.replace("ADAPTER", adapter).replace("NEEDS", needs)))
    assert got == {"jobs.down.model.adapter": message}


def test_good_output_reference_stays_symbolic(load):
    plan = load(REFS.replace("ADAPTER", "${stage1.adapter}").replace("NEEDS", "[stage1]"))
    assert plan.jobs["down"].config.model.adapter == "${stage1.adapter}"
    assert plan.jobs["down"].needs == ("stage1",)


def test_reference_into_a_sweep_must_name_a_child(problems):
    got = by_key(problems("""
        defaults: {model: {tiny: llama}}
        jobs:
          sw: {method: synthetic, matrix: {steps: [1, 2]}}
          down: {method: sft, data: {train: "${sw.dir}"}, needs: [sw]}
    """))
    assert got == {"jobs.down.data.train": "${sw.dir}: 'sw' is a sweep; name one child (sw.steps=1, sw.steps=2)"}


def test_all_problems_reported_at_once(problems, tmp_path):
    got = problems("""
        defaults: {model: {tiny: llama}}
        jobs:
          one: {method: sft, data: {train: train.jsonl}, training: {lrr: 0.1}}
          two: {method: lisaa}
          three: {method: sft, data: {train: gone.jsonl}}
    """)
    assert len(got) == 3
    assert {p.key for p in got} == {"jobs.one.training.lrr", "jobs.two.method", "jobs.three.data.train"}
    assert all(p.file == str(tmp_path / "plan.yaml") for p in got)


def test_all_problems_at_once_across_stages(problems):
    """Top-level typo, schema error, param typo, unknown needs and a graph error: all in one report."""
    got = by_key(problems("""
        defualts: {}
        jobs:
          a: {method: synthetic, params: {stepz: 3}, training: {lrr: 1}}
          b: {method: synthetic, needs: [ghost]}
          c: {method: synthetic, needs: [d]}
          d: {method: synthetic, needs: [c]}
    """))
    assert set(got) == {"defualts", "jobs.a.training.lrr", "jobs.a.params.stepz", "jobs.b.needs", "jobs.c.needs"}
    assert got["jobs.b.needs"] == "unknown job 'ghost' in needs; jobs are a, b, c, d"
    assert got["jobs.c.needs"] == "dependency cycle: c -> d -> c"


def test_needs_on_an_invalid_job_is_not_an_extra_error(problems):
    got = by_key(problems("""
        jobs:
          a: {method: lisaa}
          b: {method: synthetic, needs: [a]}
    """))
    assert got == {"jobs.a.method": f"unknown method 'lisaa'; expected one of {KNOWN}"}


@pytest.mark.parametrize("text,key,message", [
    ("jobs: {}\n", "jobs", "Dictionary should have at least 1 item after validation, not 0 (got {})"),
    ("- a\n- b\n", "(top)", "expected a mapping with 'jobs:' (and optional name, defaults)"),
    ("jobs: [\n", "(yaml)", None),
    ("jobs:\n  'bad name': {method: synthetic}\n", "jobs.bad name", "job names use letters, digits, _ . = - only"),
    ("jobs:\n  a: 3\n", "jobs.a", "Input should be a valid dictionary (got 3)"),
])
def test_malformed_plans(problems, text, key, message):
    got = problems(text)
    assert [p.key for p in got] == [key]
    if message is not None:
        assert got[0].message == message


def test_missing_plan_file(tmp_path):
    from launcher.plan import PlanError
    with pytest.raises(PlanError) as ei:
        load_plan(tmp_path / "nope.yaml")
    assert ei.value.problems == [Problem(str(tmp_path / "nope.yaml"), "(file)", "no such plan file")]


def test_plan_error_text_names_file_key_and_message(problems, tmp_path):
    from launcher.plan import PlanError
    got = problems("jobs:\n  a: {method: lisaa}\n")
    assert str(PlanError(got)) == f"{tmp_path / 'plan.yaml'}: jobs.a.method: unknown method 'lisaa'; expected one of {KNOWN}"


# --------------------------------------------------------------------------- matrices and naming

def test_matrix_default_child_names(load):
    plan = load("""
        jobs:
          sw:
            method: synthetic
            matrix: {steps: [3, 5], training.lr: [0.001]}
          after: {method: synthetic, needs: [sw]}
    """)
    assert list(plan.jobs) == ["sw.steps=3.lr=0.001", "sw.steps=5.lr=0.001", "after"]
    child = plan.jobs["sw.steps=5.lr=0.001"]
    assert child.base == "sw"
    assert child.sweep == {"steps": 5, "training.lr": 0.001}
    assert child.method_params["steps"] == 5
    assert child.config.training.lr == 0.001
    assert plan.jobs["after"].needs == ("sw.steps=3.lr=0.001", "sw.steps=5.lr=0.001")


SEED_TEMPLATE = "{model}_{method}_f_{rho}_{poison_ratio}_{sample_num}_{alignment_step}_{finetune_step}_{guide_data_num}"


def test_matrix_name_template_seed_style(load):
    plan = load("""
        defaults: {model: {tiny: llama, name: Llama-2-7b-hf}}
        jobs:
          attack:
            method: sft
            data: {train: train.jsonl, harmful: harmful.jsonl}
            params: {sample_num: 100}
            matrix: {poison_ratio: [0.05, 0.1]}
            name_template: "{model}_{method}_f_{poison_ratio}_{sample_num}"
          eval: {method: synthetic, needs: [attack]}
    """)
    names = ["Llama-2-7b-hf_sft_f_0.05_100", "Llama-2-7b-hf_sft_f_0.1_100"]
    assert list(plan.jobs) == [*names, "eval"]
    assert plan.jobs[names[1]].method_params == {"template": "auto", "poison_ratio": 0.1, "sample_num": 100,
                                                 "save_adapter": True}
    assert plan.jobs["eval"].needs == tuple(names)


def test_matrix_name_template_full_seed_style_with_lisa(load):
    plan = load(f"""
        defaults: {{model: {{tiny: llama, name: Llama-2-7b-hf}}}}
        jobs:
          lisa:
            method: lisa
            data: {{train: train.jsonl, guide: harmful.jsonl}}
            params: {{poison_ratio: 0.1, sample_num: 1000, alignment_step: 100, finetune_step: 900, guide_data_num: 10000}}
            matrix: {{rho: [1, 0.5]}}
            name_template: "{SEED_TEMPLATE}"
    """)
    assert list(plan.jobs) == ["Llama-2-7b-hf_lisa_f_1_0.1_1000_100_900_10000",
                               "Llama-2-7b-hf_lisa_f_0.5_0.1_1000_100_900_10000"]
    assert plan.jobs["Llama-2-7b-hf_lisa_f_1_0.1_1000_100_900_10000"].method_params["rho"] == 1


def test_name_template_default_model_name_and_job_field(load):
    plan = load("""
        defaults: {model: {tiny: llama}}
        jobs:
          attack:
            method: sft
            data: {train: train.jsonl}
            matrix: {poison_ratio: [0.2]}
            name_template: "{job}-{model}_{method}_f_{poison_ratio}_{sample_num}"
    """)
    assert list(plan.jobs) == ["attack-tiny-llama_sft_f_0.2_None"]


def test_name_template_unknown_field_lists_available(problems):
    got = by_key(problems(f"""
        defaults: {{model: {{tiny: llama}}}}
        jobs:
          lisa:
            method: sft
            data: {{train: train.jsonl}}
            matrix: {{poison_ratio: [0.1, 0.2]}}
            name_template: "{SEED_TEMPLATE}"
    """))
    available = ", ".join(sorted({*SFTParams.model_fields, "job", "method", "model"}))
    assert got == {"jobs.lisa.name_template": f"unknown field 'rho' in {SEED_TEMPLATE!r}; available: {available}"}
    assert "poison_ratio, sample_num" in available


def test_name_template_must_distinguish_children(problems):
    got = by_key(problems("""
        jobs:
          sw:
            method: synthetic
            matrix: {steps: [1, 2]}
            name_template: "{job}_{method}"
    """))
    assert got == {"jobs.sw": "two jobs are named 'sw_synthetic'; make name_template include every matrix key"}


def test_matrix_param_typo_reported_once(problems):
    got = by_key(problems("""
        jobs:
          sw: {method: synthetic, matrix: {stepz: [1, 2, 3]}}
    """))
    assert list(got) == ["jobs.sw.params.stepz"]


@pytest.mark.parametrize("matrix", ["{steps: 3}", "{steps: []}", "[1, 2]"])
def test_matrix_values_must_be_non_empty_lists(problems, matrix):
    got = by_key(problems(f"""
        jobs:
          sw: {{method: synthetic, matrix: {matrix}}}
    """))
    assert list(got) == ["jobs.sw.matrix"]


# --------------------------------------------------------------------------- --set

PIPE = """
    defaults:
      method: synthetic
      params: {steps: 20, step_time: 0.05}
    jobs:
      a: {}
      b: {params: {steps: 5}}
"""


def test_set_overrides_defaults_and_job_values(load):
    plan = load(PIPE, sets=["defaults.params.step_time=0.5", "jobs.b.params.steps=7", "jobs.a.retry.max_restarts=0",
                            "jobs.a.needs=[b]"])
    assert plan.jobs["a"].method_params["step_time"] == 0.5
    assert plan.jobs["b"].method_params == {**plan.jobs["b"].method_params, "steps": 7, "step_time": 0.5}
    assert plan.jobs["a"].method_params["steps"] == 20
    assert plan.jobs["a"].config.retry.max_restarts == 0
    assert list(plan.jobs) == ["b", "a"]
    assert plan.raw["jobs"]["b"]["params"]["steps"] == 7      # what the run directory records


def test_set_errors_are_problems_and_are_validated(problems):
    got = by_key(problems(PIPE, sets=["oops", "jobs.a.params.stepz=3"]))
    assert got == {"--set": "--set 'oops': expected key.path=value",
                   "jobs.a.params.stepz": "unknown key 'stepz' (did you mean 'steps'?); expected one of "
                                          + fields(SyntheticParams)}


# --------------------------------------------------------------------------- defaults

def test_defaults_deep_merge_in_plan(load):
    plan = load("""
        defaults:
          model: {tiny: llama}
          training: {lr: 0.5, lora: {r: 16, target_modules: [q_proj, k_proj, v_proj]}}
          env: {A: "1"}
        jobs:
          sft:
            method: sft
            data: {train: train.jsonl}
            training: {batch_size: 4, lora: {target_modules: [o_proj]}}
            env: {B: "2"}
    """)
    t = plan.jobs["sft"].config.training
    assert (t.lr, t.batch_size, t.lora.r, t.lora.target_modules) == (0.5, 4, 16, ["o_proj"])
    assert plan.jobs["sft"].config.env == {"A": "1", "B": "2"}


# --------------------------------------------------------------------------- DeepSpeed configs

def test_ds_config_batch_autos_filled_others_left(load):
    plan = load(SFT + "        deepspeed: zero2\n        training: {batch_size: 3, grad_accum: 4, max_grad_norm: 0.5}\n"
                      "        resources: {gpus_per_node: 2}\n")
    job = plan.jobs["sft"]
    assert job.ds_name == str(REPO / "ds_configs" / "zero2.json")
    cfg = job.ds_config
    assert cfg["train_micro_batch_size_per_gpu"] == 3
    assert cfg["gradient_accumulation_steps"] == 4
    assert cfg["train_batch_size"] == 3 * 4 * 2
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["zero_optimization"]["reduce_bucket_size"] == "auto"   # not a batch value: HF fills it
    assert cfg["bf16"] == {"enabled": "auto"}


def test_ds_config_default_is_zero2_and_null_means_none(load):
    assert load(SFT).jobs["sft"].ds_config["zero_optimization"]["stage"] == 2
    job = load(SFT + "        deepspeed: null\n").jobs["sft"]
    assert (job.ds_name, job.ds_config) == (None, None)


def test_ds_config_path_relative_to_plan_and_explicit_values_kept(load, tmp_path):
    (tmp_path / "my_ds.json").write_text('{"train_batch_size": 64, "train_micro_batch_size_per_gpu": "auto", '
                                         '"zero_optimization": {"stage": 3}}')
    job = load(SFT + "        deepspeed: my_ds.json\n        training: {batch_size: 2}\n").jobs["sft"]
    assert job.ds_name == str((tmp_path / "my_ds.json").resolve())
    assert job.ds_config["train_batch_size"] == 64
    assert job.ds_config["train_micro_batch_size_per_gpu"] == 2


def test_dsconfig_resolve_does_not_mutate_input():
    from launcher import dsconfig
    raw = {"train_batch_size": "auto", "nested": {"x": "auto"}}
    out = dsconfig.resolve(raw, TrainingSpec(batch_size=2, grad_accum=2), world_size=4)
    assert out["train_batch_size"] == 16 and out["nested"] == {"x": "auto"}
    assert raw["train_batch_size"] == "auto"
    assert dsconfig.zero_stage(out) == 0 and dsconfig.zero_stage(None) is None
