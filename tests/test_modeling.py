"""Model and tokenizer I/O on the tiny fixture model: real `from_pretrained` round trips, atomic saves, seeds."""

import copy
import os
import shutil

import pytest
import torch

from r1kit.errors import UserError
from r1kit.models.modeling import TAG_TOKENS, count_params, eos_ids, load_model, new_model, save_model

TEXT = "User: 345*6. Reason in <think> </think>, answer in <answer> </answer>. Assistant: <think> 5*6=30 c3 </think> <answer>2,070</answer>"


@pytest.fixture(scope="module")
def saved(tiny_model, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "model"
    save_model(tiny_model, tokenizer, out)
    return out


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]  # (T, V)


def test_save_then_load_gives_the_same_model(tiny_model, tokenizer, saved):
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(saved))
    model, tok = load_model(saved)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    ids = tokenizer(TEXT).input_ids
    assert tok(TEXT).input_ids == ids
    torch.testing.assert_close(_logits(model, ids), _logits(tiny_model, ids), atol=0, rtol=0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert eos_ids(model, tok) == eos_ids(tiny_model, tokenizer) == [tokenizer.eos_token_id]
    assert (tok.pad_token_id, tok.padding_side) == (tokenizer.pad_token_id, "left")


def test_load_trainable(saved):
    model, _ = load_model(saved, trainable=True)
    assert model.training
    model, _ = load_model(saved, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_tokenizer_roundtrip(tokenizer, saved):
    _, loaded = load_model(saved)
    for tok in (tokenizer, loaded):
        ids = tok(TEXT).input_ids
        assert tok.decode(ids) == TEXT
        pieces = tok.convert_ids_to_tokens(ids)
        for tag in TAG_TOKENS:
            assert len(tok(tag).input_ids) == 1  # each R1 tag is one token
            assert tag in pieces
        assert len(tok("2070").input_ids) == 4  # digits one per token


def test_new_model_is_seeded(tiny_config, tokenizer):
    before = torch.random.get_rng_state()
    a = new_model(tiny_config, tokenizer, seed=0)
    b = new_model(tiny_config, tokenizer, seed=0)
    c = new_model(tiny_config, tokenizer, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is left alone
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert not torch.equal(
        sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"]
    )


def test_new_model_sizes(tiny_config, tokenizer):
    model = new_model(tiny_config, tokenizer)
    v = model.config.vocab_size
    assert v % 64 == 0 and len(tokenizer) <= v < len(tokenizer) + 64
    with pytest.raises(UserError, match="size"):
        new_model("huge", tokenizer)


def test_count_params_counts_tied_weights_once(tiny_model):
    cfg = tiny_model.config
    c, i, v, layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (c // cfg.num_attention_heads)
    per_layer = 2 * c * c + 2 * c * kv + 3 * c * i + 2 * c  # q, o; k, v; gate, up, down; two norms
    expected = v * c + layers * per_layer + c  # embedding (= lm_head), layers, final norm
    assert count_params(tiny_model) == expected
    every_tensor = sum(t.numel() for t in tiny_model.state_dict().values())
    assert every_tensor == expected + v * c  # the state dict holds the tied matrix twice


def test_save_refuses_nan_and_leaves_nothing(tiny_model, tokenizer, tmp_path):
    bad = copy.deepcopy(tiny_model)
    with torch.no_grad():
        bad.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="up_proj"):
        save_model(bad, tokenizer, tmp_path / "runs" / "bad")
    assert list(tmp_path.rglob("*")) == []  # no model dir, no temp dir, not even the parent


def test_save_refuses_inf_into_an_existing_dir(tiny_model, tokenizer, tmp_path):
    out = tmp_path / "m"
    save_model(tiny_model, tokenizer, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = copy.deepcopy(tiny_model)
    with torch.no_grad():
        bad.model.norm.weight[3] = float("inf")
    with pytest.raises(FloatingPointError):
        save_model(bad, tokenizer, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_save_cleans_up(tiny_model, tokenizer, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_model, tokenizer, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # neither the model dir nor a temp dir


def test_saving_into_an_existing_dir_replaces_the_files(tiny_config, tiny_model, tokenizer, tmp_path):
    out = tmp_path / "run"
    save_model(tiny_model, tokenizer, out)
    (out / "metrics.jsonl").write_text('{"step": 0}\n')  # a run directory holds other files too
    other = new_model(tiny_config, tokenizer, seed=7)
    save_model(other, tokenizer, out, extra_files={"note.txt": "hello"})
    model, _ = load_model(out)
    ids = tokenizer(TEXT).input_ids
    torch.testing.assert_close(_logits(model, ids), _logits(other, ids), atol=0, rtol=0)
    assert (out / "metrics.jsonl").read_text() == '{"step": 0}\n'
    assert (out / "note.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp dir left beside it


def test_load_missing_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_load_dir_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="config.json"):
        load_model(tmp_path)


def test_load_file_instead_of_dir(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    with pytest.raises(UserError):
        load_model(path)


def test_load_broken_dirs(saved, tmp_path):
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(saved, no_weights)
    (no_weights / "model.safetensors").unlink()
    for path in (bad_json, no_weights):
        with pytest.raises(UserError, match="cannot load"):
            load_model(path)


def test_saved_model_directory_has_a_normal_mode(saved):
    """Not mkdtemp's 0700: other users (a serving process, a shared cluster) can read the model."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o777 & ~umask
