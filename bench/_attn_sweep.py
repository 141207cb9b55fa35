import itertools, json, torch, triton
from triton.testing import do_bench
from rlinf.rollout.fast.triton_attention import triton_decode_attention
from rlinf.rollout.fast import triton_ops
torch.manual_seed(0)
for bs in (64, 256, 1024):
    KV, H, D, L = 2, 12, 128, 512
    ck = torch.randn(bs, KV, L, D, device="cuda", dtype=torch.bfloat16)
    cv = torch.randn_like(ck)
    q = torch.randn(bs, H, D, device="cuda", dtype=torch.bfloat16)
    lens = torch.randint(256, 513, (bs,), device="cuda")
    nbytes = lens.sum().item() * KV * D * 2 * 2
    t = do_bench(lambda: triton_decode_attention(q, ck, cv, lens, 0.088), warmup=5, rep=30, return_mode="median")
    print("attn", bs, f"{t*1e3:.1f}us", f"{nbytes/t/1e9:.2f}TB/s")
    logits = torch.randn(bs, 151936, device="cuda", dtype=torch.bfloat16)
    for temp in (0.0, 1.0):
        t = do_bench(lambda: triton_ops.sample(logits, temp, 3), warmup=5, rep=30, return_mode="median")
        print("sample", bs, temp, f"{t*1e3:.1f}us", f"{logits.numel()*2/t/1e9:.2f}TB/s")
