"""The training algorithms: GRPO and what it is made of, and the SFT step that distillation shares.

- rl_config.py: the RL run's config dataclasses (layer 0); rewards.py: rule rewards as plain functions (layer 0);
  doctor.py: notices when a run cannot learn (layer 0);
- losses.py: advantages, policy losses and aggregations, KL, importance weights, distillation losses (layer 1);
  logprobs.py: chunked completion log-probabilities (layer 1);
- grpo.py: the update on one rollout (layer 2); shared_prompts.py: log-probs with a prompt computed once per
  group (layer 2); sft.py: reading SFT rows, the cosine schedule, one optimiser step over packed rows (layer 2);
- rollouts.py: an RL step's data: the question stream, G completions sampled per question, scored into rewards,
  dynamic-sampling refills (layer 2); rl_step.py: the update on a rank's kept groups, the step's metrics, the
  learning-rate schedule (layer 2). loops/rl.py strings these together.

Named `algo` rather than `rl` because SFT and distillation's shared step (sft.py) and the distillation losses live
here too. Layers 0-2: the pure-Python modules import no torch, so `import r1kit.algo.rewards` stays cheap.
"""
