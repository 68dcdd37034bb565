"""Seeded mutations of the shipped plans, for the plan fuzzer (test_plan_fuzz.py).

A case is fully determined by its seed: the same seed gives the same plan text and the same --set
overrides, so a failure is reproduced by running that one seed again.
"""

from __future__ import annotations

import copy
import datetime
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NodePath = tuple[Any, ...]

# Values a person (or a bad merge) might put anywhere: wrong types, empty and huge values, paths
# the OS refuses (NUL, over-long names), text that is not valid Unicode, references and templates.
ODD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 3.5, -0.0, 1e308, float("inf"), float("nan"), 2**64, -(2**63),
    "", " ", "auto", "null", "zero3", "smollm2", "llama", "x" * 300, "a/" * 2100, "a\0b", "data/\0.jsonl",
    "\ud800", "caf\xe9", "日本語", "\t\n", "../../../../etc/passwd", "/", ".", "..", "~", "~sl_no_such_user/x",
    "/etc/passwd", "/bin/sh", "/dev/null", "/proc/self/status", "data", "data/sst2_mini.jsonl",
    "${nojob.adapter}", "${stage1_align.adapter}", "${stage1_align.nope}", "${", "${env:SL_FUZZ_NOT_SET}",
    "{job}", "{0}", "{nope}", "{method!z}", "{method:>9999}", "%s", "org/name", "a b", "-x",
    [], {}, [None], [1, "a", {}], ["x" * 300], {"x": 1}, {"source": None}, {"source": "x" * 300},
    {"tiny": "llama"}, {"path": "a\0b"}, {"gguf": "x" * 300}, {"step": -1}, {"stage": "auto"},
    {"training.max_steps.x": [1]}, {"method.x": [1]}, {"params": [1]}, {"lr": list(range(3))},
    datetime.date(2024, 1, 1), b"\xff\xfe",
)

# Raw `--set` values, written as on a command line: not all of them are valid YAML.
ODD_SET_TEXT: tuple[str, ...] = (
    "", "[", "{a", "]", "'", '"', "!!python/object:os.system", "*alias", "&a", "%YAML 9", "a: b: c", "- x",
    "[" * 600 + "]" * 600, "{a: " * 300 + "1" + "}" * 300, "\x00", "\ud800", "1e999", "0x1f", ".inf", "~",
)

# Aimed at the keys that become file names and paths (the plan name, job names, data and model
# paths, ds configs, output names), sweep keys and name templates: where the OS gets involved.
ODD_NAMES: tuple[Any, ...] = ("x" * 300, "x" * 201, "a/b", "..", ".", "a b", "", "-x", "caf\xe9", "a\0b", "\ud800", 1, None)
ODD_PATHS: tuple[str, ...] = (
    "x" * 300, "data/" + "x" * 300 + ".jsonl", "a/" * 2100, "a\0b", "data/\ud800.jsonl", "~sl_no_such_user/x",
    "/etc/passwd", "/bin/sh", "/", "..", "data", "${nojob.adapter}", "${sft_tiny.adapter}/" + "x" * 300, "org/name",
)
PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("data", "train"), ("data", "eval"), ("data", "train", "source"), ("model", "path"), ("model", "gguf"),
    ("model", "adapter"), ("model", "tokenizer"), ("deepspeed",), ("params", "output_name"), ("env", "HF_HOME"),
)
ODD_MATRICES: tuple[Any, ...] = (
    {"training.max_steps.x": [1]}, {"method.x": [1]}, {"model.tiny.x": [1]}, {"training.lora.r": [1, 2]}, {1: [1]},
    {"": [1]}, {"a..b": [1]}, {"params": [1]}, {"lr": [1, 2]}, {"template": ["x" * 300]}, {"training.lr": [0.1, 0.2]},
    {"x": []}, {"x": 1}, [1], {"seed": list(range(40))},
)
ODD_TEMPLATES: tuple[Any, ...] = (
    "{job}_{x.y}", "{job[0]}", "{job[x]}", "{method:>999999999}", "{method!r}", "{0}", "{}", "{", "}", "{job}" + "x" * 300,
    "{{job}}", "{job}/{method}", "{job}", 1, None,
)

KEY_TYPOS = ("drop", "double", "swap", "upper", "plural", "dash", "long", "slash", "space", "int", "none", "dot")

BYTES = b"\x00\xff\xc3\x80\xfe\"':\n \t{}[]-#&*!%@`|>?,\\"


@dataclass(frozen=True)
class Case:
    seed: int
    plan: Path                 # the shipped plan it started from
    text: bytes                # the mutated plan file
    sets: tuple[str, ...]      # --set overrides
    steps: tuple[str, ...]     # what was done, in words

    def describe(self) -> str:
        return f"seed {self.seed} on {self.plan.name}: " + "; ".join(self.steps)


def node_paths(tree: Any, prefix: NodePath = ()) -> list[NodePath]:
    """Every node below the root, parents before children."""
    out: list[NodePath] = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(node_paths(v, prefix + (k,)))
    return out


def _get(tree: Any, path: NodePath) -> Any:
    for k in path:
        tree = tree[k]
    return tree


# libyaml where present: the fuzzer's own parsing and dumping should not eat its time budget.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@functools.lru_cache(maxsize=None)
def _shipped(plan: Path) -> tuple[bytes, Any]:
    raw = plan.read_bytes()
    return raw, yaml.load(raw, Loader=_Loader)


def _dump(tree: Any, **kw: Any) -> str:
    try:
        return yaml.dump(tree, Dumper=_Dumper, sort_keys=False, allow_unicode=True, **kw)
    except UnicodeEncodeError:  # a lone surrogate: only the Python dumper writes it (as an escape)
        return yaml.dump(tree, Dumper=yaml.SafeDumper, sort_keys=False, allow_unicode=False, **kw)


def _typo(rng: random.Random, key: Any) -> Any:
    s = str(key)
    kind = rng.choice(KEY_TYPOS)
    i = rng.randrange(len(s)) if s else 0
    return {
        "drop": s[:i] + s[i + 1:],
        "double": s[:i] + s[i:i + 1] * 2 + s[i + 1:],
        "swap": s[:i] + s[i + 1:i + 2] + s[i:i + 1] + s[i + 2:],
        "upper": s.upper(),
        "plural": s + "s",
        "dash": s.replace("_", "-") if "_" in s else s + "_",
        "long": (s + "_") * (300 // (len(s) + 1) + 1),
        "slash": s + "/x",
        "space": s + " x",
        "int": 1,
        "none": None,
        "dot": s + ".x",
    }[kind]


def _dotted(path: NodePath) -> str:
    return ".".join(str(k) for k in path)


class Mutator:
    """One case's mutations, drawn from its own seeded generator."""

    def __init__(self, seed: int, plans: list[Path]):
        self.seed = seed
        self.rng = random.Random(seed)
        self.plan = self.rng.choice(plans)
        self.raw, tree = _shipped(self.plan)
        self.tree = copy.deepcopy(tree)
        self.sets: list[str] = []
        self.steps: list[str] = []

    def case(self) -> Case:
        rng = self.rng
        tree_ops = [self.swap, self.delete, self.misspell, self.transplant, self.set_override, self.set_into_scalar,
                    self.hot_spot, self.hot_spot]
        edited = False
        if rng.random() < 0.2:   # the original text (comments and all), bytes flipped
            text = self.raw
        else:
            for _ in range(rng.randint(1, 3)):
                edited = rng.choice(tree_ops)() or edited
            text = _dump(self.tree).encode() if edited else self.raw
        if not edited or rng.random() < 0.15:
            text = self.flip_bytes(text)
        return Case(self.seed, self.plan, text, tuple(self.sets), tuple(self.steps))

    # ---- tree mutations: each returns whether it changed the tree (--set ones do not)

    def _pick(self, want: type | None = None) -> NodePath | None:
        paths = node_paths(self.tree)
        if want is not None:
            paths = [p for p in paths if isinstance(_get(self.tree, p[:-1]) if p[:-1] else self.tree, want)]
        return self.rng.choice(paths) if paths else None

    def swap(self) -> bool:
        path = self._pick()
        if path is None:
            return False
        value = copy.deepcopy(self.rng.choice(ODD_VALUES))
        _get(self.tree, path[:-1])[path[-1]] = value
        self.steps.append(f"swap {_dotted(path)} = {value!r:.80}")
        return True

    def delete(self) -> bool:
        path = self._pick()
        if path is None:
            return False
        del _get(self.tree, path[:-1])[path[-1]]
        self.steps.append(f"delete {_dotted(path)}")
        return True

    def misspell(self) -> bool:
        path = self._pick(dict)
        if path is None:
            return False
        parent = _get(self.tree, path[:-1])
        new = _typo(self.rng, path[-1])
        if new in parent:
            return False
        # Rebuilt, not popped and re-added: the key keeps its place (job order is plan order).
        items = [(new if k == path[-1] else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)
        self.steps.append(f"rename {_dotted(path)} -> {new!r:.80}")
        return True

    def transplant(self) -> bool:
        src, dst = self._pick(), self._pick()
        if src is None or dst is None:
            return False
        sub = copy.deepcopy(_get(self.tree, src))
        parent = _get(self.tree, dst[:-1])
        if isinstance(parent, dict) and self.rng.random() < 0.5:
            parent[src[-1]] = sub   # under its own key name, beside the target
            self.steps.append(f"copy {_dotted(src)} into {_dotted(dst[:-1]) or '(top)'}")
        else:
            parent[dst[-1]] = sub
            self.steps.append(f"copy {_dotted(src)} over {_dotted(dst)}")
        return True

    def hot_spot(self) -> bool:
        jobs = self.tree.get("jobs") if isinstance(self.tree, dict) else None
        if not isinstance(jobs, dict) or not jobs:
            return False
        rng, job = self.rng, self.rng.choice(list(jobs))
        kind = rng.choice(("name", "job name", "path", "matrix", "name_template"))
        if kind == "name":
            value = self.tree["name"] = rng.choice(ODD_NAMES)
            self.steps.append(f"name = {value!r:.80}")
        elif kind == "job name":
            value = rng.choice(ODD_NAMES)
            if value in jobs:
                return False
            items = [(value if k == job else k, v) for k, v in jobs.items()]
            jobs.clear()
            jobs.update(items)
            self.steps.append(f"rename job {job} -> {value!r:.80}")
        else:
            body = jobs[job] if isinstance(jobs[job], dict) else {}
            jobs[job] = body
            if kind == "path":
                keys, value = rng.choice(PATH_KEYS), rng.choice(ODD_PATHS)
            else:
                keys, value = (kind,), copy.deepcopy(rng.choice(ODD_MATRICES if kind == "matrix" else ODD_TEMPLATES))
            node = body
            for k in keys[:-1]:
                if not isinstance(node.get(k), dict):
                    node[k] = {}
                node = node[k]
            node[keys[-1]] = value
            self.steps.append(f"jobs.{job}.{'.'.join(keys)} = {value!r:.80}")
        return True

    def _set_value(self) -> str:
        if self.rng.random() < 0.4:
            return self.rng.choice(ODD_SET_TEXT)
        return _dump(self.rng.choice(ODD_VALUES), default_flow_style=True).removesuffix("\n...\n").strip()

    def set_override(self) -> bool:
        path = self._pick(dict)
        dotted = _dotted(path) if path else "name"
        if self.rng.random() < 0.3:
            dotted += "." + str(_typo(self.rng, dotted.rsplit(".", 1)[-1]))
        self.sets.append(f"{dotted}={self._set_value()}")
        self.steps.append(f"--set {self.sets[-1]!r:.100}")
        return False

    def set_into_scalar(self) -> bool:
        """--set a.b=1 where a holds a scalar (or a list)."""
        leaves = [p for p in node_paths(self.tree) if not isinstance(_get(self.tree, p), dict)]
        if not leaves:
            return False
        path = self.rng.choice(leaves)
        self.sets.append(f"{_dotted(path)}.{self.rng.choice(['x', 'step', 'source', '0'])}={self._set_value()}")
        self.steps.append(f"--set {self.sets[-1]!r:.100}")
        return False

    # ---- raw text

    def flip_bytes(self, text: bytes) -> bytes:
        b = bytearray(text)
        for _ in range(self.rng.randint(1, 4)):
            if not b:
                break
            i = self.rng.randrange(len(b))
            kind = self.rng.choice(("bit", "byte", "insert", "delete", "truncate"))
            if kind == "bit":
                b[i] ^= 1 << self.rng.randrange(8)
            elif kind == "byte":
                b[i] = self.rng.choice(BYTES)
            elif kind == "insert":
                b.insert(i, self.rng.choice(BYTES))
            elif kind == "delete":
                del b[i]
            else:
                del b[i:]
            self.steps.append(f"{kind} at byte {i}")
        return bytes(b)


def make_case(seed: int, plans: list[Path]) -> Case:
    return Mutator(seed, plans).case()
