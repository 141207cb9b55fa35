"""Tiny HF model directories: built in-process, loaded with Auto*, exported and reloaded."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlinf.models.causal_lm import export_hf, load_causal_lm, load_tokenizer
from rlinf.models.tiny_lm import build_tiny_lm, train_tokenizer

CORPUS = [f"What is {a} + {b}? \\boxed{{{a + b}}}" for a in range(40) for b in range(40)]
TEXTS = ["What is 23 + 48?", "héllo\n\n  world 12345 \\frac{1}{2}", "<|im_end|>x<|pad|>"]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return build_tiny_lm(out, CORPUS, arch=request.param, hidden_size=64, num_layers=2, seed=1)


def test_tiny_lm_loads_with_auto_classes(model_dir):
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    arch = json.loads((model_dir / "config.json").read_text())["model_type"]
    assert type(model).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 2_000_000
    assert model.config.vocab_size == len(tok)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|pad|>", "<|bos|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    # the reloaded tokenizer is the one that was trained (same corpus -> same tokenizer)
    fresh = train_tokenizer(CORPUS)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == fresh(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    digits = tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])
    assert digits == ["1", "2", "3", "4", "5"]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    out = model.generate(
        **tok([chat], return_tensors="pt", add_special_tokens=False),
        max_new_tokens=4,
        do_sample=False,
    )
    assert out.shape[1] <= len(tok(chat, add_special_tokens=False)["input_ids"]) + 4


def test_build_is_seeded_and_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_lm(tmp_path / "a", CORPUS, hidden_size=32, num_heads=2, num_kv_heads=1, seed=4)
    assert torch.equal(torch.rand(3), expected)
    b = build_tiny_lm(tmp_path / "b", CORPUS, hidden_size=32, num_heads=2, num_kv_heads=1, seed=4)
    c = build_tiny_lm(tmp_path / "c", CORPUS, hidden_size=32, num_heads=2, num_kv_heads=1, seed=5)
    wa, wb, wc = (load_causal_lm(p).state_dict() for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    with pytest.raises(ValueError, match="num_heads"):
        build_tiny_lm(tmp_path / "d", CORPUS, hidden_size=30, num_heads=4)


def test_load_errors_name_the_key(tmp_path, model_dir):
    key = "rollout.model.model_path"
    with pytest.raises(ValueError, match=f"{key}: directory '{tmp_path / 'nope'}' does not exist"):
        load_causal_lm(tmp_path / "nope", key=key)
    with pytest.raises(ValueError, match="actor.model.model_path: directory .* does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_causal_lm(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{key}: .*empty' has no config.json"):
        load_causal_lm(tmp_path / "empty", key=key)
    with pytest.raises(ValueError, match=f"{key}: could not load a tokenizer"):
        load_tokenizer(tmp_path / "empty", key=key)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no weights"):
        load_causal_lm(no_weights)


def test_load_dtype_and_tokenizer(model_dir):
    model = load_causal_lm(model_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tok = load_tokenizer(model_dir)
    assert tok.pad_token == "<|pad|>" and tok.padding_side == "left"


def test_export_round_trip(tmp_path, model_dir):
    model = load_causal_lm(model_dir)
    tok = load_tokenizer(model_dir)
    with torch.no_grad():  # move away from the saved weights so that a stale copy would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ids = torch.tensor([tok("What is 23 + 48? \\boxed{71}")["input_ids"]])
    export_hf(model, tok, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "export")("12")["input_ids"]
        == tok("12")["input_ids"]
    )


def test_export_from_a_given_full_state_dict(tmp_path, model_dir):
    model = load_causal_lm(model_dir)
    full = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}  # "gathered"
    export_hf(model, None, tmp_path / "export", state_dict=full)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, full[name]), name
