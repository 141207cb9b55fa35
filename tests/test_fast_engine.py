"""The fast rollout engine against transformers on tiny random models (CPU, fp32)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlinf.rollout import build_engine
from rlinf.rollout.base import SamplingParams
from rlinf.rollout.fast.engine import FastEngine
from rlinf.rollout.fast.rope import rope_inv_freq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    vocab_size=203,
    max_position_embeddings=256,
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=None,
    initializer_range=0.3,  # peaked next-token distributions, not near-uniform ones
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _qwen3():
    cls = getattr(transformers, "Qwen3ForCausalLM", None)
    if cls is None:
        pytest.skip("transformers has no Qwen3")
    return cls(transformers.Qwen3Config(**TINY, head_dim=16))


MODELS = {
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**TINY)),
    "qwen2_tied": lambda: Qwen2ForCausalLM(Qwen2Config(**TINY, tie_word_embeddings=True)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**TINY)),
    "llama_llama3_rope": lambda: LlamaForCausalLM(LlamaConfig(**TINY, rope_parameters=LLAMA3_ROPE)),
    "llama_linear_rope_bias": lambda: LlamaForCausalLM(
        LlamaConfig(
            **TINY,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        )
    ),
    "qwen3": _qwen3,
}

PROMPTS = [[5, 17, 3, 99, 42], [7], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [150, 2, 9]]


def make(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return MODELS[kind]().eval()


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def teacher_forced(model, prompt: list[int], response: list[int], temperature: float):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].double()
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return [lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(response)]


@pytest.mark.parametrize("kind", list(MODELS))
def test_greedy_matches_transformers_generate(kind):
    model = make(kind)
    engine = FastEngine(model, max_seq_len=64, max_num_seqs=8)
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.0))
    for prompt, got in zip(PROMPTS, out.token_ids):
        assert got == hf_greedy(model, prompt, 12)
    assert out.finish_reasons == ["length"] * len(PROMPTS)


@pytest.mark.parametrize("kind", ["qwen2", "llama_llama3_rope", "qwen3"])
@pytest.mark.parametrize("temperature,top_p,top_k", [(0.0, 1.0, -1), (0.7, 0.9, 20), (1.3, 1, -1)])
def test_logprobs_match_teacher_forced_forward(kind, temperature, top_p, top_k):
    model = make(kind)
    engine = FastEngine(model, max_seq_len=64, max_num_seqs=8)
    params = SamplingParams(
        max_new_tokens=10, temperature=temperature, top_p=top_p, top_k=top_k, seed=3
    )
    out = engine.generate(PROMPTS, params)
    t = params.logprob_temperature
    for prompt, toks, lps in zip(PROMPTS, out.token_ids, out.logprobs):
        assert len(toks) == len(lps) == 10
        ref = teacher_forced(model, prompt, toks, t)
        assert max(abs(a - b) for a, b in zip(lps, ref)) < 1e-4


def test_continuous_batching_equals_each_prompt_alone():
    model = make("qwen2", seed=1)
    prompts = [[(7 * i + j) % 200 + 1 for j in range(1 + (5 * i) % 13)] for i in range(9)]
    engine = FastEngine(model, max_seq_len=48, max_num_seqs=3, sync_interval=2)
    first = engine.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0))
    # A stop token that ends some responses early, so slots free at different times.
    stop = first.token_ids[0][5]
    params = SamplingParams(max_new_tokens=16, temperature=0.0, stop_token_ids=(stop,))
    batched = engine.generate(prompts, params)
    lengths = {len(t) for t in batched.token_ids}
    assert len(lengths) > 1, "the test needs sequences finishing at different steps"
    for i, prompt in enumerate(prompts):
        alone = engine.generate([prompt], params)
        assert batched.token_ids[i] == alone.token_ids[0]
        assert batched.finish_reasons[i] == alone.finish_reasons[0]
        assert max(abs(a - b) for a, b in zip(batched.logprobs[i], alone.logprobs[0])) < 1e-5
        ref = hf_greedy(model, prompt, 16)
        n = len(batched.token_ids[i])
        assert batched.token_ids[i] == ref[:n]
        if stop in ref:
            assert n == ref.index(stop) + 1 and batched.finish_reasons[i] == "stop"
        else:
            assert n == 16 and batched.finish_reasons[i] == "length"


def test_stop_tokens_eos_and_max_seq_len():
    model = make("llama")
    engine = FastEngine(model, max_seq_len=20, max_num_seqs=4, eos_token_id=())
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0))
    eos = free.token_ids[1][3]
    engine.eos_token_ids = (eos,)
    stopped = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0))
    for want, got, reason in zip(free.token_ids, stopped.token_ids, stopped.finish_reasons):
        n = want.index(eos) + 1 if eos in want else len(want)
        assert got == want[:n]
        assert reason == ("stop" if eos in want else "length")
    ignored = engine.generate(
        PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    )
    assert ignored.token_ids == free.token_ids
    # prompt of 11 tokens, max_seq_len 20: at most 9 new tokens.
    long = engine.generate(
        [PROMPTS[2]], SamplingParams(max_new_tokens=50, temperature=0.0, ignore_eos=True)
    )
    assert len(long.token_ids[0]) == 9 and long.finish_reasons == ["length"]
    with pytest.raises(ValueError, match="max_seq_len"):
        engine.generate([list(range(1, 21))], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([[1, 500]], SamplingParams(max_new_tokens=2))


def test_load_weights_matches_transformers_with_the_same_weights():
    model = make("qwen3" if hasattr(transformers, "Qwen3ForCausalLM") else "qwen2", seed=0)
    engine = FastEngine(model, max_seq_len=64, max_num_seqs=4)
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    before = engine.generate(PROMPTS, params)
    torch.manual_seed(123)
    new = type(model)(model.config).eval()
    engine.load_weights(new.state_dict().items())
    after = engine.generate(PROMPTS, params)
    assert after.token_ids != before.token_ids
    for prompt, toks, lps in zip(PROMPTS, after.token_ids, after.logprobs):
        assert toks == hf_greedy(new, prompt, 10)
        ref = teacher_forced(new, prompt, toks, 1.0)
        assert max(abs(a - b) for a, b in zip(lps, ref)) < 1e-4


def test_load_weights_errors_name_the_parameter():
    model = make("qwen2")
    engine = FastEngine(model, max_seq_len=32, max_num_seqs=2)
    with pytest.raises(ValueError, match="model.layers.0.self_attn.bogus.weight"):
        engine.load_weights([("model.layers.0.self_attn.bogus.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match="model.layers.7.mlp.up_proj.weight"):
        engine.load_weights([("model.layers.7.mlp.up_proj.weight", torch.zeros(96, 64))])
    with pytest.raises(ValueError, match=r"k_proj.weight.*\(32, 64\)"):
        engine.load_weights([("model.layers.1.self_attn.k_proj.weight", torch.zeros(16, 64))])
    engine.name_mapping = lambda n: None if n.startswith("extra.") else n.removeprefix("actor.")
    w = model.model.norm.weight.detach() * 2
    engine.load_weights([("extra.thing", torch.zeros(1)), ("actor.model.norm.weight", w)])
    assert torch.equal(engine.model.norm.cpu(), w)


def test_local_checkpoint_path_and_single_token(tmp_path):
    model = make("qwen2_tied")
    model.save_pretrained(tmp_path)
    engine = FastEngine(str(tmp_path), max_seq_len=32, max_num_seqs=2)
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, temperature=0.0))
    assert out.token_ids == [hf_greedy(model, p, 5) for p in PROMPTS]
    one = engine.generate(PROMPTS, SamplingParams(max_new_tokens=1, temperature=0.0))
    assert one.token_ids == [t[:1] for t in out.token_ids]
    assert one.finish_reasons == ["length"] * len(PROMPTS)


def test_sleep_and_wake_keep_outputs():
    model = make("qwen2")
    engine = FastEngine(model, max_seq_len=32, max_num_seqs=2)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = engine.generate(PROMPTS, params)
    engine.sleep(1)
    engine.wake()
    assert engine.generate(PROMPTS, params).token_ids == before.token_ids
    engine.sleep(2)
    assert engine.cache is None
    with pytest.raises(RuntimeError, match="wake"):
        engine.generate(PROMPTS, params)
    engine.wake()
    assert engine.generate(PROMPTS, params).token_ids == before.token_ids


def test_seeded_sampling_is_reproducible_and_top_k_one_is_greedy():
    model = make("qwen2")
    engine = FastEngine(model, max_seq_len=32, max_num_seqs=4)
    a = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, seed=11))
    b = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, seed=11))
    c = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, seed=12))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    greedy = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0))
    k1 = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, top_k=1, seed=5))
    assert k1.token_ids == greedy.token_ids
    for got, want in zip(k1.logprobs, greedy.logprobs):  # untruncated, at T = 1
        assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        dict(LLAMA3_ROPE, original_max_position_embeddings=128),
        {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
)
def test_rope_inv_freq_matches_transformers(rope):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(**TINY, rope_parameters=dict(rope))
    want, want_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, "cpu")
    got, scale = rope_inv_freq(cfg.rope_parameters, 16, cfg.max_position_embeddings, 128)
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=0)
    assert scale == pytest.approx(want_scale)


def test_build_engine_dispatch():
    model = make("qwen2")
    assert isinstance(build_engine("fast", model, max_seq_len=32, max_num_seqs=2), FastEngine)
    with pytest.raises(ValueError, match="rollout.backend"):
        build_engine("tensorrt", model)
    for backend, extra in (("vllm", "rlinf[vllm]"), ("sglang", "rlinf[sglang]")):
        try:
            __import__(backend)
        except ImportError:
            with pytest.raises(ImportError, match=extra.replace("[", r"\[")):
                build_engine(backend, "/nonexistent")


def test_unsupported_architecture_is_a_clear_error():
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)
    with pytest.raises(ValueError, match="rollout.backend: hf"):
        FastEngine(cfg, max_seq_len=16, max_num_seqs=1)


def test_bench_script_runs_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        os.path.join(REPO, "bench", "rollout_engine.py"),
        "--model-shape", "tiny", "--device", "cpu", "--dtype", "fp32",
        "--batch-sizes", "4,8", "--hf-batch-sizes", "4",
        "--prompt-len", "8", "--gen-len", "8", "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {r["batch_size"]: r for r in report["results"]}
    assert set(rows) == {4, 8}
    assert rows[4]["fast_tokens_per_s"] > 0 and rows[4]["hf_tokens_per_s"] > 0
    assert rows[4]["speedup"] == pytest.approx(
        rows[4]["fast_tokens_per_s"] / rows[4]["hf_tokens_per_s"]
    )
    assert rows[8]["hf_tokens_per_s"] is None
    assert rows[8]["roofline_fraction"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "bs,heads,kv_heads,length", [(3, 12, 2, 80), (5, 4, 2, 700), (2, 8, 8, 300)]
)
def test_triton_decode_attention_matches_sdpa(dtype, bs, heads, kv_heads, length):
    from rlinf.rollout.fast.attention import decode_attention, decode_mask
    from rlinf.rollout.fast.triton_attention import triton_decode_attention

    torch.manual_seed(0)
    dev = torch.device("cuda")
    cache_k = torch.randn(bs + 2, kv_heads, length + 9, 64, device=dev, dtype=dtype)
    cache_v = torch.randn_like(cache_k)
    k, v = cache_k[:bs, :, :length], cache_v[:bs, :, :length]
    q = torch.randn(bs, heads, 64, device=dev, dtype=dtype)
    lengths = torch.randint(1, length + 1, (bs,), device=dev)
    lengths[0] = length
    ref = decode_attention(
        q.double(), k.double(), v.double(), decode_mask(lengths, length, torch.float64), 0.125
    )
    got = triton_decode_attention(q, k, v, lengths, 0.125).double()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got - ref).abs().max().item() < tol


@pytest.mark.gpu
def test_triton_sampler_matches_softmax():
    from rlinf.rollout.fast.triton_ops import sample

    torch.manual_seed(0)
    logits = (torch.randn(6, 151936, device="cuda") * 3).to(torch.bfloat16)
    tok, lp = sample(logits, 0.0, 0)
    ref = torch.log_softmax(logits.float(), dim=-1)
    assert torch.equal(tok, logits.float().argmax(-1))
    assert torch.allclose(lp, ref.gather(1, tok[:, None])[:, 0], atol=1e-4)
    tok, lp = sample(logits, 0.7, 5)
    ref = torch.log_softmax(logits.float() / 0.7, dim=-1).gather(1, tok[:, None])[:, 0]
    assert torch.allclose(lp, ref, atol=1e-4)
    assert torch.equal(sample(logits, 0.7, 5)[0], tok)
    small = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -2.0, 0.3], device="cuda")
    draws = sample(small.expand(200_000, 8).contiguous(), 1.3, 7)[0]
    freq = torch.bincount(draws, minlength=8).double() / draws.numel()
    probs = torch.softmax(small.double() / 1.3, dim=-1)
    assert (freq - probs).abs().max().item() < 0.005  # ~4 sigma at n = 200k
