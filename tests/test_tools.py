"""Tools and multi-turn rollouts: the tool interface, middle truncation, the call formats (code and chat, a
tool-aware template and the Hermes fallback), the turn loop with scripted models (a row that calls a tool right,
one that calls it wrongly, one that never calls; every budget), r1kit's sampler running the same loop, loss masks
through GRPO and SFT. The python tool runs in the sandbox (bubblewrap; skipped where it cannot)."""

import pytest
import torch

from r1kit.algo.grpo import UpdateSettings, build_rollout, train_on_rollout
from r1kit.errors import UserError
from r1kit.models.packing import IGNORE, encode_example
from r1kit.rollout import SamplerEngine
from r1kit.rollout.multiturn import run_episodes, tool_counts, tool_rates
from r1kit.rollout.sampler import SamplingParams
from r1kit.tools import ToolConfig, check_tool_names, make_toolbox
from r1kit.tools.base import Observation, ToolCall, budget_reward, check_arguments, truncate_middle
from r1kit.tools.formats import ChatFormat, CodeFormat, chat_template_report
from r1kit.tools.python import PythonTool
from sandbox_helpers import requires_sandbox
from tools_helpers import ScriptedEngine

needs_sandbox = requires_sandbox

CALL = "<think> use python\n```python\nprint(12*34)\n```"
ANSWER = " so 408 </think> <answer>408</answer>"


def _episodes(tokenizer, scripts, config=None, max_new_tokens=64, tools=("python",)):
    prompts = [tokenizer(f"User: q{i}. Assistant:").input_ids for i in range(len(scripts))]
    engine = ScriptedEngine(tokenizer, prompts, scripts, tokenizer.eos_token_id)
    box = make_toolbox(list(tools), config or ToolConfig(), chat=False, tokenizer=tokenizer)
    eps = run_episodes(engine, prompts, SamplingParams(1.0, 1.0, max_new_tokens), tools=box, tokenizer=tokenizer,
                       eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
    return eps, engine


def _masked_text(tokenizer, ep, keep: int) -> str:
    return tokenizer.decode([t for t, m in zip(ep.tokens, ep.mask) if m == keep])


# ---- pieces ------------------------------------------------------------------------------------------------

def test_truncate_middle_keeps_head_and_tail_within_the_budget():
    text = "".join(str(i % 10) for i in range(2000))
    cut = truncate_middle(text, 50, count=len)
    assert len(cut) <= 50 and cut.startswith("0123") and cut.endswith(text[-5:]) and "characters cut" in cut
    assert truncate_middle("short", 50, count=len) == "short"


def test_check_arguments_names_what_is_wrong():
    params = PythonTool.parameters
    assert check_arguments(params, {"code": "1"}) == ""
    assert "missing" in check_arguments(params, {})
    assert "unknown" in check_arguments(params, {"code": "1", "x": 2})
    assert "type string" in check_arguments(params, {"code": 3})
    assert "object" in check_arguments(params, ["code"])


def test_budget_reward_clamps_only_budget_stops():
    assert budget_reward(2.0, True) == 0.0 and budget_reward(-1.0, True) == -1.0
    assert budget_reward(2.0, False) == 2.0 and budget_reward(2.0, True, "grade") == 2.0


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError):
        ToolConfig(format="xml")
    with pytest.raises(UserError):
        ToolConfig(max_turns=0)
    with pytest.raises(UserError):
        check_tool_names(["shell"])
    assert check_tool_names(["none"]) == [] and check_tool_names("") == []


def test_code_format_reads_a_closed_python_block_at_the_end_of_the_turn():
    fmt = CodeFormat()
    assert fmt.find_call("think\n```python\nprint(1)\n```") == ToolCall("python", {"code": "print(1)\n"})
    assert fmt.find_call("```python\nprint(1)\n```\n") is not None
    assert fmt.find_call("```python\nprint(1)") is None  # still open
    assert fmt.find_call("```python\nx\n``` and then more") is None  # not at the end of the turn
    assert fmt.find_call("```output\n3\n```") is None  # the model writing its own output block is no call
    assert fmt.observation_text(Observation("3"), "x```") == "\n```output\n3\n```\n"


CHATML_TOOLS = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHATML_PLAIN = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
FORGETFUL = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}"
             "{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # drops earlier reasoning (Qwen3)


@pytest.fixture
def chat_tokenizer(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def _chat(tok, template):
    tok.chat_template = template
    return ChatFormat(tok, [{"type": "function", "function": {"name": "python", "parameters": PythonTool.parameters}}])


def test_chat_format_tool_aware_template(chat_tokenizer):
    fmt = _chat(chat_tokenizer, CHATML_TOOLS)
    assert fmt.tool_aware and fmt.prefix_preserving and chat_template_report(fmt) == []
    prompt = fmt.render_messages([{"role": "user", "content": "hi"}], generation_prompt=True)
    assert '"name": "python"' in prompt and prompt.endswith("<|im_start|>assistant\n")
    obs = fmt.observation_text(Observation("408"), "")
    assert obs == "<|im_end|>\n<|im_start|>user\n<tool_response>\n408\n</tool_response><|im_end|>\n" \
                  "<|im_start|>assistant\n"
    call = fmt.find_call('I will compute.\n<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n'
                         '</tool_call>')
    assert call == ToolCall("python", {"code": "print(1)"})
    assert fmt.find_call('<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"1\\"}"}</tool_call>') \
        == ToolCall("python", {"code": "1"})  # arguments as a JSON string
    assert fmt.find_call("<tool_call>{not json}</tool_call>").problem.startswith("the tool call is not valid JSON")
    assert fmt.find_call('<tool_call>{"arguments": {}}</tool_call>').problem
    assert fmt.find_call("no call here") is None


def test_chat_format_hermes_fallback_and_prefix_report(chat_tokenizer):
    fmt = _chat(chat_tokenizer, CHATML_PLAIN)
    assert not fmt.tool_aware and fmt.prefix_preserving
    assert "Hermes fallback" in chat_template_report(fmt)[0]
    prompt = fmt.render_messages([{"role": "user", "content": "hi"}], generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n# Tools") and "<tool_call>" in prompt
    assert fmt.observation_text(Observation("7"), "") == \
        "<|im_end|>\n<|im_start|>tool\n<tool_response>\n7\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    forgetful = _chat(chat_tokenizer, FORGETFUL)
    assert not forgetful.prefix_preserving
    assert any("not prefix-preserving" in n for n in chat_template_report(forgetful))


def test_auto_format_follows_the_prompt(tokenizer):
    assert make_toolbox(["python"], ToolConfig(), chat=False, tokenizer=tokenizer).format.name == "code"
    with pytest.raises(UserError):
        make_toolbox(["python"], ToolConfig(format="chat"), chat=False, tokenizer=tokenizer)
    assert make_toolbox([], ToolConfig(), chat=False) is None


# ---- the turn loop with scripted models ----------------------------------------------------------------------

@needs_sandbox
def test_scripted_rows_call_right_wrongly_and_never(tokenizer):
    scripts = [[CALL, ANSWER],  # calls the tool, reads 408, answers
               ["<think>\n```python\nprint(1/0)\n```", " it failed </think> <answer>0</answer>"],  # an error
               ["<think> 2 </think> <answer>2</answer>"]]  # never calls
    eps, _ = _episodes(tokenizer, scripts)
    good, bad, never = eps
    assert good.finished and good.stop == "answer" and good.turns == 2
    assert [c["status"] for c in good.calls] == ["ok"]
    assert _masked_text(tokenizer, good, 0) == "\n```output\n408\n```\n"  # exactly the observation is masked
    assert _masked_text(tokenizer, good, 1) == CALL + ANSWER + tokenizer.eos_token
    assert tokenizer.decode(good.tokens) == CALL + "\n```output\n408\n```\n" + ANSWER + tokenizer.eos_token
    assert all(lp == 0.0 for lp, m in zip(good.logprobs, good.mask) if m == 0)
    assert all(lp == -0.5 for lp, m in zip(good.logprobs, good.mask) if m == 1)  # the engine's, kept
    assert good.model_tokens + good.observation_tokens == len(good.tokens)
    assert bad.finished and bad.calls[0]["status"] == "error"  # an error is an observation, not a stop
    assert "ZeroDivisionError" in _masked_text(tokenizer, bad, 0)
    assert never.finished and never.calls == [] and never.turns == 1 and all(never.mask)
    rates = tool_rates(tool_counts(eps))
    assert rates["tool_use_share"] == pytest.approx(2 / 3) and rates["tool_error_rate"] == 0.5
    assert rates["tool_calls_per_trajectory"] == pytest.approx(2 / 3)


@needs_sandbox
def test_budgets_stop_trajectories_as_truncated(tokenizer):
    forever = [CALL] * 10  # calls again after every observation
    eps, _ = _episodes(tokenizer, [forever], ToolConfig(max_turns=3, max_calls=5), max_new_tokens=300)
    assert eps[0].stop == "max_turns" and not eps[0].finished and eps[0].turns == 3 and len(eps[0].calls) == 2
    eps, _ = _episodes(tokenizer, [[CALL, CALL, ANSWER]], ToolConfig(max_turns=4, max_calls=1), max_new_tokens=300)
    statuses = [c["status"] for c in eps[0].calls]
    assert statuses == ["ok"]  # the second call is answered "budget used up" and not run
    assert "budget (1 calls) is used up" in _masked_text(tokenizer, eps[0], 0)
    eps, _ = _episodes(tokenizer, [[CALL, ANSWER]], max_new_tokens=8)  # model tokens
    assert eps[0].stop == "max_new_tokens" and eps[0].model_tokens == 8 and not eps[0].finished
    exact = len(tokenizer(CALL, add_special_tokens=False).input_ids)  # the call uses the whole model budget
    eps, _ = _episodes(tokenizer, [[CALL, ANSWER]], max_new_tokens=exact)
    assert eps[0].stop == "max_new_tokens" and eps[0].model_tokens == exact and eps[0].calls
    eps, _ = _episodes(tokenizer, [[CALL, ANSWER]], ToolConfig(max_turn_tokens=10))
    assert eps[0].stop == "max_turn_tokens" and eps[0].model_tokens == 10
    eps, _ = _episodes(tokenizer, [[CALL, ANSWER]], ToolConfig(max_total_tokens=len(tokenizer(CALL).input_ids) + 3))
    assert eps[0].stop == "max_total_tokens" and not eps[0].finished
    long_print = ["<think>\n```python\nprint('7' * 5000)\n```", ANSWER]
    eps, _ = _episodes(tokenizer, [long_print], ToolConfig(max_observation_tokens=40))
    observed = _masked_text(tokenizer, eps[0], 0)
    assert eps[0].finished and "characters cut" in observed and eps[0].observation_tokens <= 40 + 16  # + the fences


@needs_sandbox
def test_a_false_stop_candidate_continues_the_turn(tokenizer):
    inline = "<think> `x` is a name\n```python\nx = 3\nprint(x * 136)\n```"
    eps, engine = _episodes(tokenizer, [[inline, ANSWER]])
    assert eps[0].finished and eps[0].calls[0]["status"] == "ok" and "408" in _masked_text(tokenizer, eps[0], 0)
    assert engine.calls > 2  # stopped at each backtick, went on until the block closed


@needs_sandbox
def test_earlier_cells_are_replayed_within_an_episode_only(tokenizer):
    first = "<think>\n```python\nsecret = 41\nprint('set')\n```"
    second = " then\n```python\nprint(secret + 1)\n```"
    other = "<think>\n```python\nprint(secret)\n```"
    eps, _ = _episodes(tokenizer, [[first, second, ANSWER], [other, ANSWER]], max_new_tokens=200)
    assert _masked_text(tokenizer, eps[0], 0) == "\n```output\nset\n```\n\n```output\n42\n```\n"  # replayed silently
    assert "NameError" in _masked_text(tokenizer, eps[1], 0)  # another row never sees it


def test_the_loop_runs_on_r1kits_sampler(tokenizer, tiny_model):
    """A random tiny model through SamplerEngine: every round continues from the exact ids, masks line up with the
    tokens, and the model's log-probs are the sampler's."""
    prompts = [tokenizer("User: 12*34. Assistant:").input_ids] * 4
    box = make_toolbox(["python"], ToolConfig(max_turns=2), chat=False, tokenizer=tokenizer)
    eps = run_episodes(SamplerEngine(tiny_model), prompts, SamplingParams(1.0, 1.0, 24), tools=box,
                       tokenizer=tokenizer, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                       generator=torch.Generator().manual_seed(0))
    again = run_episodes(SamplerEngine(tiny_model), prompts, SamplingParams(1.0, 1.0, 24), tools=box,
                         tokenizer=tokenizer, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                         generator=torch.Generator().manual_seed(0))
    assert [e.tokens for e in eps] == [e.tokens for e in again]  # seeded: the same trajectories
    for e in eps:
        assert len(e.tokens) == len(e.mask) == len(e.logprobs) and e.model_tokens <= 24
        assert all(lp < 0 for lp, m in zip(e.logprobs, e.mask) if m)


# ---- training on trajectories --------------------------------------------------------------------------------

@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean", "constant"])
def test_observation_tokens_carry_no_loss_in_grpo(tiny_model, aggregation):
    """Masked (observation) tokens reach neither the loss nor its counts: two rollouts that differ only in their
    masked tokens give the same gradient and statistics, for every aggregation, with KL and TIS on. (The masked
    tokens sit at the end here, so no model token after them sees them in its context.)"""
    import copy

    prompts, adv = [[5, 6, 7], [8, 9]], torch.tensor([1.0, -1.0])
    masks = [[1, 1, 0, 0, 0], [1, 1]]
    settings = UpdateSettings(1.0, aggregation, 0.1, 0.2, 0.2, 1, 1, 8, 0.0, tis_cap=2.0, skip_zero_advantage=False)
    grads, stats = [], []
    for comp in ([[10, 11, 12, 13, 14], [15, 16]], [[10, 11, 40, 41, 42], [15, 16]]):
        model = copy.deepcopy(tiny_model).train()
        roll = build_rollout(prompts, comp, 0, adv, loss_masks=masks)
        assert roll.completion_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
        roll.ref_logprobs = torch.full(roll.completion_mask.shape, -3.0)
        roll.behaviour_logprobs = torch.full(roll.completion_mask.shape, -4.0)
        stats.append(train_on_rollout(model, torch.optim.SGD(model.parameters(), lr=0.0), roll, settings))
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-7)  # the observation tokens changed, the gradient did not
    for key in ("loss", "kl", "entropy", "mismatch_kl", "tis_weight"):
        assert stats[0][key] == pytest.approx(stats[1][key], abs=1e-6), key


def test_sft_turns_mask_the_tools_text(tokenizer):
    turns = [{"role": "model", "text": CALL}, {"role": "tool", "text": "\n```output\n408\n```\n"},
             {"role": "model", "text": ANSWER}]
    ex = encode_example(tokenizer, "User: q. Assistant:", "".join(t["text"] for t in turns), 512, turns=turns)
    labels = ex.labels()
    tool_ids = tokenizer(turns[1]["text"], add_special_tokens=False).input_ids
    first = len(tokenizer(CALL, add_special_tokens=False).input_ids)
    body = labels[ex.n_prompt:]
    assert body[first: first + len(tool_ids)] == [IGNORE] * len(tool_ids)
    assert IGNORE not in body[:first] and IGNORE not in body[first + len(tool_ids):]
    plain = encode_example(tokenizer, "User: q. Assistant:", "abc", 512)
    assert plain.mask is None and IGNORE not in plain.labels()[plain.n_prompt:]
