"""The RL (GRPO) configuration: one dataclass per concern, each field documented beside it.

Defaults follow the R1-Zero column of ../shared/r1-reference.md §2 where they make sense at any scale (β=0.001,
temperature 1.0, G=16, reference reset every 400 steps, 16 mini-batches are *not* the default: a small run has
too few completions). Variants (GRPO, Dr. GRPO, DAPO) are named rows of `VARIANTS` that fill whatever the user
left unset. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r1kit.config import EvalConfig, LogConfig, LoraConfig, ParallelConfig
from r1kit.errors import UserError
from r1kit.tasks.formats import PromptConfig
from r1kit.tools import check_tool_names
from r1kit.tools.base import ToolConfig

# name -> settings it implies (only applied to fields the user left as None)
VARIANTS: dict[str, dict] = {
    "grpo": {"loss_aggregation": "seq_mean", "advantage_scale": "std", "eps_high": None,
             "dynamic_sampling": False},
    "dr_grpo": {"loss_aggregation": "constant", "advantage_scale": "none", "eps_high": None,
                "dynamic_sampling": False},
    "dapo": {"loss_aggregation": "token_mean", "advantage_scale": "std", "eps_high": 0.28,
             "dynamic_sampling": True},
}
LOSS_AGGREGATIONS = ("seq_mean", "token_mean", "constant")
ADVANTAGE_SCALES = ("std", "none")
LR_SCHEDULES = ("constant", "cosine", "linear")
ROLLOUT_BACKENDS = ("r1kit", "vllm", "auto")  # r1kit.rollout.BACKENDS (this module is pure Python)
ROLLOUT_DTYPES = ("auto", "fp32", "bf16")


@dataclass
class RolloutConfig:
    prompts_per_step: int = 16  # questions per step, over all ranks
    group_size: int = 8  # G: completions sampled per question
    temperature: float = 1.0  # sampling temperature (the paper: 1.0)
    top_p: float = 1.0
    max_new_tokens: int = 128  # completion budget; longer completions are truncated
    dynamic_sampling: bool | None = None  # drop groups whose rewards are all equal and refill (DAPO)
    max_refill_rounds: int = 4  # at most this many extra sampling rounds per step when refilling
    batch_size: int = 256  # completions sampled in one batch
    backend: str = "r1kit"  # rollout engine: r1kit (its own sampler) | vllm (in-process, colocated) | auto
    dtype: str = "auto"  # the rollout engine's precision: auto (the training compute dtype) | fp32 | bf16
    overlap: bool = False  # sample step s+1 while step s trains (one step off-policy, corrected by TIS)


@dataclass
class AlgoConfig:
    variant: str = "grpo"  # a key of VARIANTS: grpo | dr_grpo | dapo
    loss_aggregation: str | None = None  # seq_mean (paper) | token_mean (DAPO) | constant (Dr. GRPO)
    advantage_scale: str | None = None  # std: (r-mean)/std | none: r-mean (Dr. GRPO)
    beta: float = 0.001  # KL weight; 0 loads no reference model at all
    ref_reset_every: int = 400  # replace the reference by the current policy every N steps; 0 never
    eps_low: float = 0.2  # clip ratio below 1
    eps_high: float | None = None  # clip ratio above 1 (clip-higher); None: same as eps_low
    mu: int = 1  # inner epochs over each rollout
    mini_batches: int = 1  # optimiser steps per epoch: the rollout is split into this many parts
    mask_truncated: bool = False  # truncated completions carry no loss (DAPO's overlong filtering)
    micro_batch_tokens: int = 8192  # padded tokens per forward/backward pass (gradients accumulate); lower it to
    # cut activation memory (a 135M model with a 49K vocabulary holds ~2 GB per 1,000 tokens)
    share_prompts: bool = True  # compute each distinct prompt once per micro-batch (exact; shared_prompts.py)
    skip_zero_advantage: bool = True  # β = 0: rows whose advantage is exactly 0 skip the forward/backward (exact)
    tis_cap: float = 2.0  # truncated importance sampling: each token's loss is weighted by
    # min(π_trainer/π_rollout, tis_cap), correcting for the rollout engine's log-probs differing from the
    # trainer's (another engine or precision, or a one-step-stale policy with rollout.overlap); 0 turns it off


@dataclass
class OptimConfig:
    lr: float = 3e-6  # peak learning rate (the paper: 3e-6)
    warmup_steps: int = 0  # linear warmup
    schedule: str = "constant"  # after warmup: constant | cosine | linear decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    beta1: float = 0.9
    beta2: float = 0.99


@dataclass
class RewardConfig:
    weights: dict = field(default_factory=lambda: {"accuracy": 1.0, "format": 1.0})  # name -> weight
    language: str = "latin"  # target script of the language-consistency reward
    overlong_buffer: int = 0  # tokens before the budget where the overlong penalty ramps in

    def __post_init__(self) -> None:
        # A --reward.weights.NAME=VALUE override arrives as a string (a dict's values have no declared type).
        if not isinstance(self.weights, dict):
            raise UserError(f"reward.weights must be a table of name = weight, got {self.weights!r}")
        weights = {}
        for name, value in self.weights.items():
            try:
                weights[name] = float(value)
            except (TypeError, ValueError):
                raise UserError(f"reward.weights.{name} = {value!r} is not a number") from None
        self.weights = weights


@dataclass
class DoctorConfig:
    strict: bool = False  # stop the run (instead of warning) when it cannot learn
    truncation_limit: float = 0.95  # warn when this share of completions is truncated
    zero_variance_limit: float = 0.95  # ... when this share of groups has all-equal rewards
    patience: int = 5  # steps a condition must last before it is reported
    mismatch_limit: float = 0.01  # warn when the rollout engine's log-probs drift from the trainer's: KL per token
    hacking_drop: float = 0.05  # held-out pass@1 falling this much while reward rises: reward hacking


@dataclass
class RLConfig:
    model: str = ""  # the policy to start from: any Hugging Face causal-LM directory
    task: str = "arithmetic"  # task spec
    out: str = ""  # run directory
    steps: int = 100  # RL steps
    seed: int = 0
    train_problems: int = 20_000  # size of the training pool (train split)
    eval_every: int = 0  # held-out evaluation every N steps (and at the end); 0: only at the end
    checkpoint_every: int = 50  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    log_every: int = 1
    final_eval: bool = True  # evaluate the final policy on the held-out split (a pipeline's eval stage may do it)
    max_flops: float = 0.0  # compute budget: stop after the step where rollout + training FLOPs reach it; 0: none
    tools: list[str] = field(default_factory=list)  # tools the model may call in its rollouts, e.g. ["python"]
    tool_use: ToolConfig = field(default_factory=ToolConfig)  # call format and budgets (tools/base.py)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n=500, k=4))
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank 0: full fine-tuning
    prompt: PromptConfig = field(default_factory=PromptConfig)  # format options over the task spec's
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # device, precision, FSDP2 sharding
    log: LogConfig = field(default_factory=LogConfig)  # trackers: TensorBoard, trackio, wandb (rank 0)

    def resolve(self, world: int = 1) -> RLConfig:
        """Fill variant defaults and check cross-field rules; raises UserError before step 1."""
        a, r = self.algo, self.rollout
        if a.variant not in VARIANTS:
            raise UserError(f"unknown algo.variant {a.variant!r}: use one of {', '.join(VARIANTS)}")
        implied = VARIANTS[a.variant]
        if a.loss_aggregation is None:
            a.loss_aggregation = implied["loss_aggregation"]
        if a.advantage_scale is None:
            a.advantage_scale = implied["advantage_scale"]
        if a.eps_high is None:
            a.eps_high = implied["eps_high"] if implied["eps_high"] is not None else a.eps_low
        if r.dynamic_sampling is None:
            r.dynamic_sampling = implied["dynamic_sampling"]
        checks = [
            (bool(self.model), "model: give the policy's directory (--model DIR)"),
            (bool(self.out), "out: give a run directory (--out RUN_DIR)"),
            (a.loss_aggregation in LOSS_AGGREGATIONS, f"algo.loss_aggregation must be one of {LOSS_AGGREGATIONS}"),
            (a.advantage_scale in ADVANTAGE_SCALES, f"algo.advantage_scale must be one of {ADVANTAGE_SCALES}"),
            (self.optim.schedule in LR_SCHEDULES, f"optim.schedule must be one of {LR_SCHEDULES}"),
            (self.steps >= 1 and self.seed >= 0, "steps must be at least 1 and seed non-negative"),
            (r.group_size >= 2, "rollout.group_size must be at least 2 (advantages compare within a group)"),
            (r.prompts_per_step % world == 0,
             f"rollout.prompts_per_step ({r.prompts_per_step}) must be divisible by the number of ranks ({world})"),
            (r.max_new_tokens >= 1 and r.temperature > 0 and 0 < r.top_p <= 1,
             "rollout: max_new_tokens >= 1, temperature > 0 and 0 < top_p <= 1"),
            (a.beta >= 0 and 0 <= a.eps_low < 1 and a.eps_high >= 0, "algo: beta >= 0 and 0 <= eps_low < 1"),
            (a.mu >= 1 and a.mini_batches >= 1, "algo.mu and algo.mini_batches must be at least 1"),
            (a.micro_batch_tokens >= 1, "algo.micro_batch_tokens must be at least 1"),
            (a.tis_cap >= 0, "algo.tis_cap must be >= 0 (0: no truncated importance sampling)"),
            (r.backend in ROLLOUT_BACKENDS, f"rollout.backend must be one of {ROLLOUT_BACKENDS}"),
            (r.dtype in ROLLOUT_DTYPES, f"rollout.dtype must be one of {ROLLOUT_DTYPES}"),
            (r.prompts_per_step >= a.mini_batches,  # a rank may hold groups of only some mini-batches
             "algo.mini_batches must not exceed rollout.prompts_per_step (each mini-batch holds whole groups)"),
            (self.optim.lr > 0 and self.optim.grad_clip >= 0, "optim.lr must be positive"),
            (bool(self.reward.weights), "reward.weights must name at least one reward"),
            (self.checkpoint_every >= 1 and self.keep_checkpoints >= 1, "checkpoint_every/keep_checkpoints >= 1"),
            (self.max_flops >= 0, "max_flops must be >= 0 (0: no compute budget)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        self.tools = check_tool_names(self.tools)
        return self
