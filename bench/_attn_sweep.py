import itertools, json, torch, triton
from triton.testing import do_bench
from rlinf.rollout.fast.triton_attention import triton_decode_attention
torch.manual_seed(0)
res = []
for bs in (64, 256, 1024):
    KV, H, D, L = 2, 12, 128, 512
    ck = torch.randn(bs, KV, L, D, device="cuda", dtype=torch.bfloat16)
    cv = torch.randn_like(ck)
    q = torch.randn(bs, H, D, device="cuda", dtype=torch.bfloat16)
    lens = torch.randint(256, 513, (bs,), device="cuda")
    nbytes = lens.sum().item() * KV * D * 2 * 2
    best = None
    for chunk, block, warps, stages in itertools.product((64, 128, 256, 512), (32, 64, 128), (2, 4, 8), (1, 2, 3)):
        if block > chunk: continue
        try:
            f = lambda: triton_decode_attention(q, ck, cv, lens, 0.088, chunk, block, warps, stages)
            t = do_bench(f, warmup=5, rep=20, return_mode="median")
        except Exception as e:
            continue
        r = dict(bs=bs, chunk=chunk, block=block, warps=warps, stages=stages, us=t*1e3, tbps=nbytes/t/1e9)
        res.append(r)
        if best is None or t < best["us"]/1e3: best = r
    print("BEST", json.dumps(best))
    for r in sorted([r for r in res if r["bs"] == bs], key=lambda r: r["us"])[:5]: print(json.dumps(r))
    d = [r for r in res if r["bs"]==bs and (r["chunk"],r["block"],r["warps"],r["stages"])==(256,64,4,2)]
    print("CURRENT", d)
