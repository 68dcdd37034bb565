"""Experiment plans: load YAML, apply --set, merge defaults, expand matrices, validate everything.

Every problem is collected (not just the first) and reported with the file, the key path and
what is expected, before anything starts. See docs in README "Plan reference".
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from launcher import commandjob, dsconfig, pathcheck, plantext
from launcher.graph import JobGraph, find_cycle
from launcher.layout import OUTPUTS
from launcher.pathcheck import NAME_CHARS_MAX
from launcher.planedits import apply_set, deep_merge, name_part, set_path
from launcher.planproblems import PlanError, Problem, pydantic_problems
from launcher.resources import ClusterShape
from launcher.spec import (CheckpointSpec, DataSource, HangSpec, ModelSpec, Resources, RetrySpec,
                           TrainingSpec)
from methods.registry import METHODS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
REF_RE = re.compile(r"\$\{([A-Za-z0-9_.=-]+)\.([a-z_]+)\}")
HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class JobConfig(BaseModel):
    """One job as written in the plan (after defaults are merged in)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(..., description="a method from methods/registry.py; its params, data roles and outputs are listed per method")
    params: dict[str, Any] = Field(default_factory=dict, description="method parameters, validated per method")
    model: ModelSpec | None = None
    data: dict[str, DataSource] = Field(default_factory=dict, description="role -> data source (train, harmful, guide, eval)")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    deepspeed: str | None = Field("zero2", description="a name from ds_configs/ (zero1, zero2, zero3, zero3_offload) or a path; null for none")
    resources: Resources = Field(default_factory=Resources)
    needs: list[str] = Field(default_factory=list, description="upstream jobs (a swept job's base name means all its children)")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    hang: HangSpec = Field(default_factory=HangSpec)
    env: dict[str, str] = Field(default_factory=dict, description="environment of the ranks; ${env:NAME} is read from the driver's environment")
    matrix: dict[str, list[Any]] = Field(default_factory=dict, description="sweep: key (a param, or a dotted path) -> values")
    name_template: str | None = Field(None, description="name of each sweep child, e.g. {model}_{method}_f_{rho}")

    @field_validator("data", mode="before")
    @classmethod
    def _data_shorthand(cls, v: Any) -> Any:
        # `train: file.jsonl` is short for `train: {source: file.jsonl}`. Expanded here rather than
        # typed as a union, so an error points at data.<role>.<key>, not at each union member.
        if isinstance(v, dict):
            return {k: {"source": s} if isinstance(s, str) else s for k, s in v.items()}
        return v


class PlanFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="plan name, the start of each run id (default: the file name without "
                                               f".yaml); letters, digits, _ . = -, at most {NAME_CHARS_MAX}")
    description: str | None = Field(None, description="free text for people; not used by the launcher")
    defaults: dict[str, Any] = Field(default_factory=dict, description="merged into every job (the job's own keys win)")
    jobs: dict[str, dict[str, Any]] = Field(..., min_length=1, description="job name (letters, digits, _ . = -; at most "
                                                                          f"{NAME_CHARS_MAX}) -> job keys")


@dataclass
class Job:
    """A fully resolved job: what the scheduler runs."""

    name: str
    base: str
    config: JobConfig
    method_params: dict[str, Any]
    data: dict[str, DataSource]
    needs: tuple[str, ...]
    ds_name: str | None
    ds_config: dict[str, Any] | None
    sweep: dict[str, Any] = field(default_factory=dict)

    @property
    def ranks_per_node(self) -> int:
        """Processes the launcher starts on each node: one per GPU, or one in all for a command job
        whose own launcher (torchrun, deepspeed, accelerate) starts the workers."""
        return METHODS[self.config.method].ranks_per_node(self.method_params, self.config.resources.gpus_per_node)

    @property
    def micro_batch(self) -> tuple[int, int]:
        """(micro-batch, accumulation) an OOM may halve: a command job's script has its own flags, so
        the launcher has nothing to change there and restarts it as it was."""
        t = self.config.training
        return (t.batch_size, t.grad_accum) if METHODS[self.config.method].scales_micro_batch else (1, 1)


@dataclass
class Plan:
    file: Path
    name: str
    jobs: dict[str, Job]          # in dependency order
    raw: dict[str, Any]           # after --set, before defaults: what the run directory records

    @property
    def graph(self) -> JobGraph:
        return JobGraph({n: j.needs for n, j in self.jobs.items()})


# --------------------------------------------------------------------------- loading

def load_plan(path: str | Path, sets: list[str] | None = None, cluster: ClusterShape | None = None,
              repo_root: Path | None = None, base_dir: Path | None = None) -> Plan:
    """Load and validate; raises PlanError listing every problem found.

    Relative paths resolve against the plan's directory, or `base_dir` (bin/resume reads the copy
    in the run directory but resolves paths where the original plan lived)."""
    path = Path(path)
    fname = str(path)
    try:
        raw = plantext.read(path)
    except plantext.Unreadable as e:
        raise PlanError([Problem(fname, e.key, e.message)]) from None
    if not isinstance(raw, dict):
        raise PlanError([Problem(fname, "(top)", "expected a mapping with 'jobs:' (and optional name, defaults)")])
    problems: list[Problem] = []
    for s in sets or []:
        try:
            apply_set(raw, s)
        except ValueError as e:
            problems.append(Problem(fname, "--set", str(e)))
    # Checked first and alone: the checks below look paths up, and the OS refuses these outright.
    unusable = [Problem(fname, key, msg) for key, msg in plantext.tree_problems(raw)]
    if unusable:
        raise PlanError(problems + unusable)
    try:
        top = PlanFile.model_validate(raw)
    except ValidationError as e:
        problems.extend(pydantic_problems(fname, (), e, PlanFile))
        try:  # a top-level typo alone: still check the jobs, so every problem is reported at once
            top = PlanFile.model_validate({k: v for k, v in raw.items() if k in PlanFile.model_fields})
        except ValidationError:
            raise PlanError(problems)
    problems.extend(Problem(fname, "name", m) for m in _plan_name_problems(top.name, path))
    ctx = _Ctx(fname, (base_dir or path.parent).resolve(), repo_root or Path(__file__).resolve().parent.parent, cluster, problems)
    jobs = ctx.expand(top)
    ctx.check_graph(jobs)  # also when jobs had problems: every problem is reported at once
    if problems:
        raise PlanError(list(dict.fromkeys(problems)))  # a swept job's error once, not once per child
    order = JobGraph({n: j.needs for n, j in jobs.items()}).order()
    return Plan(file=path.resolve(), name=top.name or path.stem, jobs={n: jobs[n] for n in order}, raw=raw)


def _plan_name_problems(name: str | None, path: Path) -> list[str]:
    """The plan name starts every run id, the run's directory name (rundir.new_run_id)."""
    why = "(it starts every run id, a directory name)"
    if not name:
        stem = path.stem
        if len(stem) > NAME_CHARS_MAX:
            return [f"the plan file's name ({pathcheck.clip(stem, 40)}), the plan name when name: is not set, has {len(stem)} "
                    f"characters; set name: to at most {NAME_CHARS_MAX} {why}"]
        return []
    if not NAME_RE.match(name):
        return [f"{pathcheck.clip(name)} uses letters, digits, _ . = - only {why}"]
    if len(name) > NAME_CHARS_MAX:
        return [f"{len(name)} characters; at most {NAME_CHARS_MAX} {why}"]
    return []


@dataclass
class _Ctx:
    fname: str
    plan_dir: Path
    repo_root: Path
    cluster: ClusterShape | None
    problems: list[Problem]

    def err(self, key: str, msg: str) -> None:
        self.problems.append(Problem(self.fname, key, msg))

    def expand(self, top: PlanFile) -> dict[str, Job]:
        jobs: dict[str, Job] = {}
        self.children: dict[str, list[str]] = {}
        self.raw_needs: dict[str, list[str]] = {}
        for base, body in top.jobs.items():
            where = f"jobs.{base}"
            self.children[base] = []  # known even if it fails below: `needs: [base]` is then no extra error
            if not NAME_RE.match(base):
                self.err(where, "job names use letters, digits, _ . = - only")
                continue
            if len(base) > NAME_CHARS_MAX:
                self.err(where, f"job name of {len(base)} characters; at most {NAME_CHARS_MAX} (it names the job's "
                         "directory and files)")
                continue
            if not isinstance(body, dict):
                self.err(where, "expected a mapping (method, params, ...)")
                continue
            merged = deep_merge(top.defaults, body)
            needs = merged.get("needs")
            self.raw_needs[base] = [n for n in needs if isinstance(n, str)] if isinstance(needs, list) else []
            matrix = merged.get("matrix") or {}
            if not isinstance(matrix, dict):
                self.err(f"{where}.matrix", "expected a mapping of key -> list of values")
                continue
            if matrix and any(not isinstance(v, list) or not v for v in matrix.values()):
                self.err(f"{where}.matrix", "each matrix key needs a non-empty list of values")
                continue
            bad_keys = [k for k in matrix if not isinstance(k, str) or not all(k.split("."))]
            if bad_keys:
                self.err(f"{where}.matrix.{bad_keys[0]}",
                         f"a matrix key is a param name or a dotted path such as training.lr (got {bad_keys[0]!r})")
                continue
            combos = [dict(zip(matrix, vals)) for vals in itertools.product(*matrix.values())] if matrix else [{}]
            names = []
            for combo in combos:
                job = self._one(base, where, merged, combo)
                if job is None:
                    continue
                if job.name in jobs:
                    self.err(where, f"two jobs are named {job.name!r}; make name_template include every matrix key")
                    continue
                jobs[job.name] = job
                names.append(job.name)
            self.children[base] = names
        return jobs

    def _one(self, base: str, where: str, merged: dict[str, Any], combo: dict[str, Any]) -> Job | None:
        body = copy.deepcopy(merged)
        for key, value in combo.items():
            why = set_path(body, key if "." in key else f"params.{key}", value)
            if why:
                self.err(f"{where}.matrix.{key}", why)
                return None
        try:
            cfg = JobConfig.model_validate(body)
        except ValidationError as e:
            self.problems.extend(pydantic_problems(self.fname, ("jobs", base), e, JobConfig))
            # Still check the method's params, so their typos are reported in the same pass.
            method, params = body.get("method"), body.get("params")
            info = METHODS.get(method) if isinstance(method, str) else None
            if info is not None and isinstance(params, dict):
                try:
                    info.params.model_validate(params)
                except ValidationError as pe:
                    self.problems.extend(pydantic_problems(self.fname, ("jobs", base, "params"), pe, info.params))
            return None
        info = METHODS.get(cfg.method)
        if info is None:
            self.err(f"{where}.method", f"unknown method {cfg.method!r}; expected one of {', '.join(sorted(METHODS))}")
            return None
        try:
            params = info.params.model_validate(cfg.params).model_dump()
        except ValidationError as e:
            self.problems.extend(pydantic_problems(self.fname, ("jobs", base, "params"), e, info.params))
            return None
        if info.prepare is not None:
            params = info.prepare(params, self.plan_dir, where, self.err)
        commandjob.check_checkpoint(info, cfg.checkpoint, where, self.err)
        name = self._name(base, where, cfg, params, combo)
        if name is None:
            return None
        if info.needs_model and cfg.model is None:
            self.err(f"{where}.model", f"method {cfg.method} needs a model (path, gguf or tiny)")
        if cfg.model is not None:
            self._check_model(f"{where}.model", cfg.model)
        data = self._data(where, cfg, info)
        ds_name, ds_config = self._deepspeed(where, cfg, info.uses_deepspeed)
        if self.cluster is not None:
            why = self.cluster.why_not(cfg.resources)
            if why:
                self.err(f"{where}.resources", why)
        return Job(name=name, base=base, config=cfg, method_params=params, data=data, needs=tuple(cfg.needs),
                   ds_name=ds_name, ds_config=ds_config, sweep=combo)

    def _name(self, base: str, where: str, cfg: JobConfig, params: dict[str, Any], combo: dict[str, Any]) -> str | None:
        if not combo and not cfg.name_template:
            return base
        if cfg.name_template:
            fields = {**params, **{k.rsplit(".", 1)[-1]: v for k, v in combo.items()}, "job": base, "method": cfg.method,
                      "model": cfg.model.short_name() if cfg.model else "none"}
            name = self._fill_template(f"{where}.name_template", cfg.name_template, {k: name_part(v) for k, v in fields.items()})
            if name is None:
                return None
        else:
            name = base + "." + ".".join(f"{k.rsplit('.', 1)[-1]}={name_part(v)}" for k, v in combo.items())
        if not NAME_RE.match(name):
            self.err(f"{where}.name_template", f"gives {name!r}, not a valid job name (letters, digits, _ . = -)")
            return None
        if len(name) > NAME_CHARS_MAX:
            self.err(f"{where}.name_template", f"gives a job name of {len(name)} characters ({name[:40]!r}...); at most "
                     f"{NAME_CHARS_MAX} (it names the job's directory and files): name the children with a shorter "
                     "name_template")
            return None
        return name

    def _fill_template(self, key: str, template: str, fields: dict[str, str]) -> str | None:
        """Plain {field} substitution. Not str.format: that also runs {a.b}, {a[0]} and {a:>999999999}."""
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as e:
            self.err(key, f"{template!r} is not a template ({e}); fields are written {{rho}}, a brace {{{{ or }}}}")
            return None
        for _, field_name, spec, conv in parts:
            if field_name is None:
                continue
            if field_name not in fields:
                self.err(key, f"unknown field {field_name!r} in {template!r}; available: {', '.join(sorted(fields))}")
                return None
            if spec or conv:
                written = "{" + field_name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                self.err(key, f"{written} in {template!r}: fields take no conversion or format here; "
                         f"write {{{field_name}}}")
                return None
        return "".join(lit + (fields[f] if f is not None else "") for lit, f, _, _ in parts)

    def _local(self, value: str) -> Path:
        p = Path(value)
        try:
            p = p.expanduser()
        except RuntimeError:  # ~user for no such user: taken as written (then reported missing)
            pass
        if p.is_absolute():
            return p
        try:
            return (self.plan_dir / p).resolve()
        except (OSError, RuntimeError):  # a symlink loop: as written
            return self.plan_dir / p

    def _usable_path(self, key: str, value: str) -> bool:
        """False (and a problem) for a path the OS would refuse to even look up."""
        why = pathcheck.path_problem(value)
        if why:
            self.err(key, why)
        return why is None

    def _check_model(self, where: str, m: ModelSpec) -> None:
        usable = {k: self._usable_path(f"{where}.{k}", v) for k in ("path", "gguf", "adapter", "tokenizer")
                  if (v := getattr(m, k))}
        if not all(usable.values()):
            return
        if m.path and not REF_RE.search(m.path) and not pathcheck.exists(self._local(m.path)) and not HUB_RE.match(m.path):
            self.err(f"{where}.path", f"{m.path!r} is neither an existing directory nor a hub id (org/name)")
        if m.path and pathcheck.exists(self._local(m.path)):
            m.path = str(self._local(m.path))
        if m.gguf and m.gguf != "smollm2" and not REF_RE.search(m.gguf):
            if not pathcheck.is_file(self._local(m.gguf)):
                self.err(f"{where}.gguf", f"no GGUF file at {self._local(m.gguf)} (or use gguf: smollm2)")
            else:
                m.gguf = str(self._local(m.gguf))

    def _data(self, where: str, cfg: JobConfig, info: Any) -> dict[str, DataSource]:
        out: dict[str, DataSource] = {}
        allowed = set(info.required_data) | set(info.optional_data)
        for role in info.required_data:
            if role not in cfg.data:
                self.err(f"{where}.data.{role}", f"method {cfg.method} needs data role {role!r}")
        for role, src in cfg.data.items():
            key = f"{where}.data.{role}"
            if role not in allowed:
                self.err(key, f"method {cfg.method} takes no data role {role!r}; "
                         f"expected {', '.join(sorted(allowed)) or 'none'}")
                continue
            ds = DataSource(source=src) if isinstance(src, str) else src
            if not self._usable_path(key, ds.source):
                continue
            local = self._local(ds.source)
            if REF_RE.search(ds.source):
                pass  # an upstream output: exists only once that job ran
            elif pathcheck.exists(local):
                ds = ds.model_copy(update={"source": str(local)})
            elif HUB_RE.match(ds.source) and not Path(ds.source).suffix:
                pass  # full hub name, e.g. stanfordnlp/sst2
            else:
                self.err(key, f"missing data file {local} (a local path relative to the plan, "
                         f"or a full hub name such as stanfordnlp/sst2; a bare name like 'sst2' is ambiguous)")
                continue
            out[role] = ds
        return out

    def _deepspeed(self, where: str, cfg: JobConfig, uses: bool) -> tuple[str | None, dict[str, Any] | None]:
        if cfg.deepspeed is None or not uses:
            return None, None
        if not self._usable_path(f"{where}.deepspeed", cfg.deepspeed):
            return cfg.deepspeed, None
        path = dsconfig.locate(cfg.deepspeed, self.plan_dir, self.repo_root)
        if path is None:
            self.err(f"{where}.deepspeed", f"missing ds config {cfg.deepspeed!r}: expected one of "
                     f"{', '.join(dsconfig.shipped(self.repo_root))} or a path to a JSON file")
            return cfg.deepspeed, None
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as e:
            self.err(f"{where}.deepspeed", f"cannot read {path}: {getattr(e, 'strerror', None) or e}")
            return str(path), None
        except json.JSONDecodeError as e:
            self.err(f"{where}.deepspeed", f"{path} is not valid JSON: {e}")
            return str(path), None
        except RecursionError:
            self.err(f"{where}.deepspeed", f"{path} is nested too deeply to read")
            return str(path), None
        why = dsconfig.shape_problem(raw)
        if why:
            self.err(f"{where}.deepspeed", f"{path}: {why}")
            return str(path), None
        return str(path), dsconfig.resolve(raw, cfg.training, cfg.resources.world_size)

    def check_graph(self, jobs: dict[str, Job]) -> None:
        for base, needs in self.raw_needs.items():  # jobs that failed validation: their needs still count
            if not self.children.get(base):
                for n in needs:
                    if n not in self.children:
                        self.err(f"jobs.{base}.needs", f"unknown job {n!r} in needs; jobs are {', '.join(sorted(self.children))}")
        for name, job in list(jobs.items()):
            where = f"jobs.{job.base}.needs"
            resolved: list[str] = []
            for n in job.needs:
                if n in self.children:
                    resolved.extend(self.children[n])
                elif n in jobs:
                    resolved.append(n)
                else:
                    self.err(where, f"unknown job {n!r} in needs; jobs are {', '.join(sorted(self.children))}")
            job.needs = tuple(dict.fromkeys(r for r in resolved if r != name))
            self._resolve_refs(job, jobs)
        # Jobs that failed validation are absent, so a cycle found among the rest is real.
        cycle = find_cycle({n: j.needs for n, j in jobs.items()})
        if cycle:
            self.err(f"jobs.{jobs[cycle[0]].base}.needs", "dependency cycle: " + " -> ".join(cycle))

    def _resolve_refs(self, job: Job, jobs: dict[str, Job]) -> None:
        """${up.output} in model/data strings must name a needed job and an output its method makes.

        A swept base name with a single child is rewritten to that child. The references stay
        symbolic (the run directory is not known yet); rundir.fill_refs turns them into paths.
        """
        where = f"jobs.{job.base}"

        def fix(key: str, s: str) -> str:
            def one(m: re.Match[str]) -> str:
                up, out = m.group(1), m.group(2)
                kids = self.children.get(up, [])
                if up in self.children and not kids:
                    return m.group(0)  # that job failed validation; its problem is already reported
                target = up if up in jobs else (kids[0] if len(kids) == 1 else None)
                if target is None:
                    self.err(key, f"${{{up}.{out}}}: " + (f"{up!r} is a sweep; name one child ({', '.join(kids)})"
                                                          if kids else f"unknown job {up!r}"))
                elif target not in job.needs:
                    self.err(key, f"${{{up}.{out}}}: add {up!r} to needs so it runs first")
                elif out not in OUTPUTS or out not in METHODS[jobs[target].config.method].outputs:
                    self.err(key, f"${{{up}.{out}}}: {jobs[target].config.method} jobs offer "
                             f"{', '.join(METHODS[jobs[target].config.method].outputs)}")
                else:
                    return "${%s.%s}" % (target, out)
                return m.group(0)
            return REF_RE.sub(one, s)

        if job.config.model is not None:
            for k in ("path", "gguf", "adapter", "tokenizer"):
                v = getattr(job.config.model, k)
                if v:
                    setattr(job.config.model, k, fix(f"{where}.model.{k}", v))
        for role, d in list(job.data.items()):
            job.data[role] = d.model_copy(update={"source": fix(f"{where}.data.{role}", d.source)})
        for key in METHODS[job.config.method].ref_params:   # a script's arguments may name an upstream job's outputs
            job.method_params[key] = [fix(f"{where}.params.{key}", a) for a in job.method_params[key]]
