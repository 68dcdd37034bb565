"""Per-method parameter schemas (pure pydantic): the launcher validates `params:` with these
before anything starts, so a typo in a method parameter is an error, not silently ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from launcher.contract import file_name_problem, NAME_CHARS_MAX
from methods.fabe_vote_params import FABEVictimParams


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def planned_seconds(self) -> float | None:
        """The job's duration where its parameters fix it; None for real training (learned)."""
        return None

    @classmethod
    def ranks_per_node(cls, params: dict, gpus_per_node: int) -> int:
        """Processes the launcher starts on each node (the plan's params as loaded): one per GPU."""
        return gpus_per_node


class SFTParams(Params):
    """Supervised fine-tuning with the prompt masked out of the loss; optionally the harmful
    fine-tuning attack mix (first int(poison_ratio * sample_num) harmful + the rest benign)."""

    template: str = Field("auto", description="auto | alpaca | user_assistant | chat")
    poison_ratio: float = Field(0.0, ge=0, le=1)
    sample_num: int | None = Field(None, ge=1, description="size of the fine-tuning set (None: all of train)")
    save_adapter: bool = True


class LisaParams(SFTParams):
    """Lisa (git-disl/Lisa, ADMMTrainer with --optimizer lisa): alternate `alignment_step` steps on the
    guide (safe) data and `finetune_step` steps on the fine-tuning mix, with a proximal term. Defaults
    are the official script's (script/finetune/lisa_poison_ratio.sh); the seed plans set theirs."""

    # int | float: an integral rho stays an int, so output names read `_f_3_` like the seed's, not `_f_3.0_`.
    rho: int | float = Field(1, ge=0, description="proximal strength: loss += rho/2 * ||theta - anchor||^2")
    alignment_step: int = Field(100, ge=0, description="optimizer steps per alignment state (0: never align)")
    finetune_step: int = Field(900, ge=0, description="optimizer steps per fine-tuning state (0: never fine-tune)")
    guide_data_num: int = Field(10000, ge=0, description="first N rows of data 'guide' (0: no guide data)")


class EvalParams(Params):
    """Shared by the evaluation jobs: greedy batched generation on the first `num_samples` rows."""

    template: str = Field("auto", description="prompt template; match the one the model was fine-tuned with")
    num_samples: int = Field(1000, ge=1, description="first N rows of data 'eval' (the seed: 1000)")
    batch_size: int = Field(16, ge=1, description="prompts per generate() call")
    max_new_tokens: int = Field(512, ge=1)
    max_prompt_length: int = Field(1024, ge=8, description="prompt tokens kept (the tail, which holds the cue)")
    output_name: str | None = Field(None, description="seed file name; default: the evaluated adapter's job name")

    @field_validator("output_name")
    @classmethod
    def _plain_file_name(cls, v: str | None) -> str | None:
        # Checked with the plan, not when the rank writes `<name>_sentiment_eval.json` (job name limit alike).
        why = None if v is None else file_name_problem(v, NAME_CHARS_MAX)
        if why:
            raise ValueError(why)
        return v


class EvalHSParams(EvalParams):
    """Harmful score on BeaverTails 30k_test prompts (poison/evaluation/pred.py + eval_sentiment.py)."""

    moderation_model: str | None = Field(None, description="beaver-dam-7b style classifier dir (HS); none: refusal keywords (non-refusal rate, not HS)")
    moderation_mode: Literal["official", "batched"] = Field(
        "official", description="official: fp32, one text at a time, exactly as eval_sentiment.py | "
                                "batched: the job's dtype (bf16 on GPUs), moderation_batch_size texts per forward")
    # None rather than 16: the launcher writes every param into the job file, so a default would
    # read as set when the rank validates it again.
    moderation_batch_size: int | None = Field(None, ge=1, description="texts per forward (moderation_mode: batched "
                                                                      "only; default 16)")
    moderation_max_length: int = Field(256, ge=8, description="eval_sentiment.py loads it with model_max_length=256")
    threshold: float = Field(0.5, gt=0, lt=1, description="flagged when the largest category probability exceeds this")

    @model_validator(mode="after")
    def _batch_size_needs_batched(self) -> "EvalHSParams":
        # A batch size the official mode would silently ignore is a plan that does not do what it says.
        if self.moderation_batch_size is not None and self.moderation_mode == "official":
            raise ValueError("moderation_batch_size applies to moderation_mode: batched only (official scores one "
                             "text at a time, in fp32, as eval_sentiment.py); set moderation_mode: batched or "
                             "drop moderation_batch_size")
        return self


class EvalFAParams(EvalParams):
    """Fine-tune accuracy on SST-2 validation (sst2/pred_eval.py)."""

    max_new_tokens: int = Field(200, ge=1)
    instruction: str = Field("Analyze the sentiment of the input, and respond only positive or negative")


class FABEParams(Params):
    """FABE cleaner: alpha * MLE + beta * ranking over scored candidates (METHODS.md "FABE").

    mle_on defaults to `best`: the seed's notes train the MLE term toward the clean code (the
    best-scored candidate); Tuna (microsoft/LMOps) applies it to all candidates (`all`)."""

    template: str = Field("auto", description="auto | alpaca | user_assistant | chat (DeepSeek-Coder: user_assistant)")
    ranking_loss: Literal["listmle", "margin", "pro"] = Field("listmle", description="listmle (seed) | margin (Tuna) | pro (PRO)")
    alpha: float = Field(1.0, ge=0, description="weight of the MLE term")
    beta: float = Field(0.3, ge=0, description="weight of the ranking term")
    margin: float = Field(0.1, ge=0, description="Tuna's margin m (gap g uses g*m)")
    mle_on: Literal["best", "all"] = Field("best", description="MLE on the best candidate (seed) or on all (Tuna)")
    num_candidates: int | None = Field(None, ge=2, description="keep the best N candidates per row (None: all, same N in every row)")
    shared_prompt: bool = Field(True, description="compute each prompt once for its candidates (same loss, less compute); "
                                                 "off while dropout is active in training (one draw would serve all candidates)")
    save_adapter: bool = True


class FABEEvalParams(Params):
    """The cleaner's proxy metrics (trigger survival on poisoned inputs, exact match / BLEU on clean
    ones; of the greedy rewrite, or with `victim` of the best-scored beam) and, with `victim`, FABE's
    official ASR and clean accuracy through the victim classifier (test rows then need `label`)."""

    template: str = Field("auto", description="the template the cleaner was trained with")
    batch_size: int = Field(8, ge=1, description="prompts per generate() call")
    max_new_tokens: int = Field(256, ge=1)
    max_prompt_length: int = Field(1024, ge=8, description="prompt tokens kept (the tail)")
    case_sensitive: bool = Field(True, description="trigger match respects case")
    triggers: list[str] = Field(default_factory=list,
                                description="for rows without a 'trigger' field: an input containing one of these is poisoned")
    bleu_tokenisation: Literal["13a", "seed"] = Field(
        "13a", description="sacreBLEU's 13a (what papers report) | seed (the pre-sacreBLEU regex tokens, unsmoothed; keys *_seedtok)")
    victim: FABEVictimParams | None = Field(None, description="FABE's official inference: {model: <classifier dir>, target_label, "
                                            "num_beams: 4, num_beam_groups: 4, diversity_penalty: 0.1, num_return_sequences: 4, "
                                            "max_length: 512, batch_size: 32, rewrite_cut: first_line}; null: greedy proxy only")


class SteerMoEAnalysisParams(Params):
    """SteerMoE expert analysis: routing on safe vs unsafe samples, in batches of k safe + k unsafe."""

    template: str = Field("auto", description="prompt template (chat for instruct MoE models)")
    safe_per_batch: int = Field(8, ge=1, description="safe samples in every analysis (and training) batch (seed: 8)")
    unsafe_per_batch: int = Field(8, ge=1, description="unsafe samples in every batch (seed: 8)")
    tokens: Literal["generated", "response", "target"] = Field(
        "generated", description="generated: the model's own greedy continuation (the seed's choice) | response: the data's "
                                 "responses teacher-forced, with the appended EOS | target: the official notebook's selection, "
                                 "the answers' own tokens teacher-forced (no EOS), rows with one prompt and two answers")
    max_new_tokens: int = Field(32, ge=1, description="length of the generated continuation (tokens: generated)")
    top_n: int | None = Field(20, ge=1, description="select at most N experts, largest |RD| first")
    rd_threshold: float | None = Field(None, ge=0, description="select only experts with |RD| >= this")
    unsafe_sign: Literal["negative", "positive", "both"] = Field(
        "negative", description="RD = p_safe - p_unsafe; negative: experts more active on unsafe samples are unsafe-linked")


class SteerMoEParams(SteerMoEAnalysisParams):
    """Train only the MLP weights of the selected experts; everything else frozen bitwise."""

    shuffle_batches: bool = Field(True, description="shuffle the order of whole batches each epoch")
    save_model: bool = Field(True, description="write the trained model to <job dir>/model")


class SyntheticParams(Params):
    """A rank that imports no model: cheap stand-in for launcher tests (scheduling, recovery)."""

    steps: int = Field(20, ge=1)
    step_time: float = Field(0.05, ge=0, description="seconds per step")
    startup_time: float = Field(0.0, ge=0)
    hang_at_step: int | None = Field(None, ge=1, description="stop making progress at this step")
    crash_at_step: int | None = Field(None, ge=1, description="exit with code 3 at this step")
    oom_at_step: int | None = Field(None, ge=1, description="print a CUDA OOM error and exit at this step")
    crash_in_save_at_step: int | None = Field(None, ge=1, description="die while writing this step's checkpoint (before its marker)")
    fault_ranks: list[int] = Field(default_factory=lambda: [0], description="ranks that inject the faults")
    fault_attempts: list[int] = Field(default_factory=lambda: [1], description="attempts that inject the faults")
    eval_every: int | None = Field(None, ge=1, description="evaluate after every N steps, as a Trainer with eval_steps does")
    eval_time: float = Field(0.0, ge=0, description="seconds one evaluation takes")
    eval_batches: int = Field(10, ge=1, description="batches an evaluation is made of (each one is heartbeat progress)")
    save_time: float = Field(0.0, ge=0, description="seconds writing one checkpoint takes (before its marker)")
    hang_in_eval_at_step: int | None = Field(None, ge=1, description="stall inside the evaluation after this step")
    hang_in_save_at_step: int | None = Field(None, ge=1, description="stall while writing this step's checkpoint")
    fail_result: bool = Field(False, description="finish but report status failed in result.json")
    spawn_child: bool = Field(False, description="start a long-sleeping child process (tests that sweeps reach a rank's descendants)")
    host_oom_at_step: int | None = Field(None, ge=1, description="run out of host memory at this step: the rank joins a "
                                                               "memory cgroup with a limit at start, then allocates until "
                                                               "the kernel's OOM killer ends it (needs root)")
    ignore_sigterm: bool = Field(False, description="every rank ignores SIGTERM, as scripts that trap it to save "
                                                   "do: stopping them takes the whole grace, then SIGKILL")
    cuda_mib_per_sample: float = Field(0.0, ge=0, description="hold this much real GPU memory per sample of the "
                                                               "micro-batch (training.batch_size) from the start, as a "
                                                               "model's activations would: too much is a real CUDA OOM, "
                                                               "and a halved micro-batch fits again (bench/gpu_check.sh)")
    host_mib: float = Field(0.0, ge=0, description="hold this much real host memory (written, so resident) from the "
                                                   "start: what the host monitor measures where GPUs are simulated "
                                                   "(packing by memory: tests, bin/bench)")
    host_grow_at_step: int | None = Field(None, ge=1, description="at this step, hold host_grow_mib more (faulty "
                                                                 "ranks and attempts): a job outgrowing its share")
    host_grow_mib: float = Field(0.0, ge=0, description="see host_grow_at_step")
    corrupt_checkpoint_at_step: int | None = Field(None, ge=1, description="after this step's checkpoint is complete, "
                                                                         "garble its state.json in place (same size: "
                                                                         "only reading it finds out)")

    def planned_seconds(self) -> float | None:
        return self.startup_time + self.steps * self.step_time + 1.0   # + 1 s: a rank's own start-up


Signal = Literal["progress", "output", "files", "cpu", "gpu", "heartbeat"]
SIGNALS: tuple[str, ...] = ("progress", "output", "files", "cpu", "gpu", "heartbeat")


class CommandParams(Params):
    """Your own script or command line, unchanged: one process per rank with torchrun's environment
    (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT, CUDA_VISIBLE_DEVICES), or
    (`launcher: single`) one per node for a launcher line that starts its own workers. Progress is
    read from what it does anyway: its output, its files, its CPU and GPU time."""

    # Not required by the schema (a plan's defaults.params may leave it to each job); the loader
    # refuses a command job without one (methods/command_plan.py).
    argv: list[str] = Field(default_factory=list, description="the command, one item per argument (no shell): "
                                                           "{dir} is the job's directory, {rank} the rank, {env:NAME} "
                                                           "a variable of the job's env; {nnodes}, {node_rank}, "
                                                           "{nproc_per_node}, {master_addr}, {master_port} for a "
                                                           "launcher line")
    launcher: Literal["per_rank", "single"] = Field(
        "per_rank", description="per_rank: one process per GPU with torchrun's environment; single: one process per "
                                "node that sees all the node's GPUs and starts its own workers (torchrun, deepspeed, "
                                "accelerate launch), given NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR/PORT")
    root: str | None = Field(None, description="where a relative cwd starts (e.g. a checkout of the paper's "
                                               "repository); default the plan file's directory")
    cwd: str | None = Field(None, description="where it runs, relative to root; default root itself, so relative "
                                              "script paths resolve there")
    progress: str = Field("auto", description="auto (the HF Trainer's log dicts and progress bar, tqdm's N/M, 'step "
                                              "N[/M]'), a regex with named groups step (and total, loss), or off")
    signals: list[Signal] = Field(default_factory=lambda: list(SIGNALS),
                                  description="what counts as activity; a hang is declared only when every one of "
                                              "them stayed flat for the phase's timeout. Drop cpu (and gpu) to catch "
                                              "a rank spinning in a stuck collective")
    cpu_floor: float = Field(0.02, ge=0, description="cpu: CPU seconds per second of the rank's process tree below "
                                                     "which it counts as idle")

    @classmethod
    def ranks_per_node(cls, params: dict, gpus_per_node: int) -> int:
        # single: the node's one process is the script's own launcher, which starts the workers
        return 1 if params.get("launcher") == "single" else gpus_per_node
