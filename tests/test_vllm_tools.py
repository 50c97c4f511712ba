"""The multi-turn tool loop (rollout/multiturn.py) on the vLLM backend: the same turn loop as r1kit's sampler,
each conversation re-submitted as its exact token ids. Checks that a seeded run repeats, that every model token's
log-prob from vLLM is the trainer's own, given the whole conversation before it (observations included), and that
masks line up. Runs where vLLM is installed (`make test-vllm`); the engine is test_vllm.py's."""

import pytest
import torch

from r1kit.rollout.multiturn import run_episodes
from r1kit.rollout.sampler import SamplingParams
from r1kit.tools import ToolConfig, make_toolbox
from sandbox_helpers import requires_sandbox
from test_vllm import ATOL, TEXTS, _trainer_logprobs, engine, policy, prompts, vllm_config  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.vllm, requires_sandbox]


def test_the_turn_loop_runs_on_vllm_token_in_token_out(engine, policy, prompts, tokenizer):  # noqa: F811
    engine.update_weights(policy)
    box = make_toolbox(["python"], ToolConfig(max_turns=3, max_observation_tokens=16), chat=False,
                       tokenizer=tokenizer)
    params = SamplingParams(1.0, 1.0, 24)

    def run():
        return run_episodes(engine, prompts, params, tools=box, tokenizer=tokenizer, eos_ids=[tokenizer.eos_token_id],
                            pad_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))

    eps, again = run(), run()
    assert [e.tokens for e in eps] == [e.tokens for e in again]
    for p, e in zip(prompts, eps):
        assert len(e.tokens) == len(e.mask) == len(e.logprobs) and e.model_tokens <= 24
        (trainer,) = _trainer_logprobs(policy, [p], [e.tokens], 1.0)
        model = torch.tensor(e.mask, dtype=torch.bool)
        assert (torch.tensor(e.logprobs)[model] - trainer[model]).abs().max().item() < ATOL
    assert len(eps) == len(TEXTS)
