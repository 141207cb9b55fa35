"""The transformers rollout engine: log-probs, stop tokens, padding, weights, factory."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlinf.rollout import build_engine
from rlinf.rollout.base import SamplingParams
from rlinf.rollout.hf_engine import HFEngine

CFG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    vocab_size=211,
    max_position_embeddings=256,
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=None,
    initializer_range=0.3,
)
PROMPTS = [[5, 17, 3, 99, 42], [7], [12, 13, 14, 15, 16, 17, 18, 19, 20], [150, 2, 9]]


def make(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**CFG)).eval()


def teacher_forced(model, prompt, response, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].double()
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return [lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(response)]


def hf_greedy(model, prompt, n):
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.0, 1.0, -1), (0.8, 0.9, 30), (1.0, 1, -1)])
def test_logprobs_match_teacher_forced_forward(temperature, top_p, top_k):
    model = make()
    engine = HFEngine(model)
    params = SamplingParams(
        max_new_tokens=9, temperature=temperature, top_p=top_p, top_k=top_k, seed=2
    )
    out = engine.generate(PROMPTS, params)
    for prompt, toks, lps in zip(PROMPTS, out.token_ids, out.logprobs):
        assert len(toks) == len(lps) == 9
        ref = teacher_forced(model, prompt, toks, params.logprob_temperature)
        assert max(abs(a - b) for a, b in zip(lps, ref)) < 1e-4


def test_left_padded_batch_equals_generate_alone():
    model = make(1)
    engine = HFEngine(model, max_batch_size=3)
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0))
    for prompt, toks in zip(PROMPTS, out.token_ids):
        assert toks == hf_greedy(model, prompt, 8)


def test_stop_tokens_and_eos():
    model = make()
    engine = HFEngine(model)
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0.0))
    stop = free.token_ids[0][4]
    params = SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=(stop,))
    out = engine.generate(PROMPTS, params)
    for want, got, lp, reason in zip(
        free.token_ids, out.token_ids, out.logprobs, out.finish_reasons
    ):
        n = want.index(stop) + 1 if stop in want else len(want)
        assert got == want[:n] and len(lp) == n
        assert reason == ("stop" if stop in want else "length")
    engine.eos_token_ids = (stop,)
    assert engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0.0)) == out
    ignored = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    assert engine.generate(PROMPTS, ignored).token_ids == free.token_ids


def test_load_weights_changes_outputs_like_the_new_model():
    engine = HFEngine(make(0))
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    before = engine.generate(PROMPTS, params).token_ids
    new = make(5)
    engine.load_weights(new.state_dict().items())
    after = engine.generate(PROMPTS, params).token_ids
    assert after != before
    assert after == [hf_greedy(new, p, 8) for p in PROMPTS]
    with pytest.raises(ValueError, match="model.layers.0.mlp.nope.weight"):
        engine.load_weights([("model.layers.0.mlp.nope.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"model.norm.weight.*\(64,\)"):
        engine.load_weights([("model.norm.weight", torch.zeros(3))])


def test_sleep_wake_and_factory():
    engine = build_engine("huggingface", make())
    assert isinstance(engine, HFEngine)
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    before = engine.generate(PROMPTS, params)
    engine.sleep(1)
    engine.wake()
    assert engine.generate(PROMPTS, params) == before
    with pytest.raises(ValueError, match="sleep level"):
        engine.sleep(3)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([[500]], params)
