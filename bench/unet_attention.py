"""nn.MultiheadAttention vs F.scaled_dot_product_attention on the released model's attention shapes (CPU).

    python bench/unet_attention.py

Paella's attention blocks call `nn.MultiheadAttention(x, kv, kv, need_weights=False)`, which internally calls
`scaled_dot_product_attention`. This script checks that calling SDPA directly on the same projections gives the same
numbers (eval and train mode, same dropout RNG stream) and compares the time (min over repeats, interleaved).
"""
import time
import torch, torch.nn.functional as F
from torch import nn


def sdpa_attention(mha, q_in, kv):
    B, Lq, C = q_in.shape
    h = mha.num_heads
    q, k, v = [F.linear(t, w, b).view(B, -1, h, C // h).transpose(1, 2)          # [B, h, L, d]
               for t, w, b in zip((q_in, kv, kv), mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3))]
    p = mha.dropout if mha.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)                    # [B, h, Lq, d]
    return mha.out_proj(out.transpose(1, 2).reshape(B, Lq, C))


def main(repeat=15):
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    # (width, heads, image tokens, condition tokens): levels 1 and 2 of the released model at 256 px, 77 ByT5 tokens
    for C, h, hw, L in [(1280, 16, 256, 85), (1280, 16, 64, 85)]:
        mha = nn.MultiheadAttention(C, h, dropout=0.1, batch_first=True)
        q_in = torch.randn(1, hw, C)
        kv = torch.cat([q_in, torch.randn(1, L, C)], 1)      # [image tokens ; condition tokens]
        mha.train()
        torch.manual_seed(1); a = mha(q_in, kv, kv, need_weights=False)[0]
        torch.manual_seed(1); b = sdpa_attention(mha, q_in, kv)
        train_diff = (a - b).abs().max().item()
        mha.eval()
        fa, fb = (lambda: mha(q_in, kv, kv, need_weights=False)[0]), (lambda: sdpa_attention(mha, q_in, kv))
        eval_diff = (fa() - fb()).abs().max().item()
        ta, tb = [], []
        for _ in range(repeat):
            t0 = time.perf_counter(); fa(); ta.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); fb(); tb.append(time.perf_counter() - t0)
        print(f'C={C} heads={h} queries={hw} keys={hw + L}: max|diff| eval {eval_diff:.2e}, train (same seed) '
              f'{train_diff:.2e}; min time MHA {min(ta) * 1e3:.1f} ms, SDPA {min(tb) * 1e3:.1f} ms '
              f'({torch.get_num_threads()} threads)')


if __name__ == '__main__':
    main()
