"""Time one forward pass of the released Paella v3 U-Net (1,008,350,592 params) on CPU.

    python bench/unet_forward.py                  # fp32, 64x64 tokens (256 px), 2 threads
    python bench/unet_forward.py --dtype bf16 --size 32 --threads 4

Weights are random (timing does not depend on values). The model is built on the meta device and materialised with
`to_empty`, so no time is spent in the (slow) xavier init. Needs ~4.5 GB RAM in fp32, ~2.5 GB in bf16.
Reference: the original code takes about 3.6 s per fp32 forward at 64x64 on 2 CPU threads.
"""
import argparse, resource, time
from dataclasses import asdict

import torch
from paella_nb.unet import Paella, PAELLA_V3, Attention2D


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--size', type=int, default=64, help='token grid side (64 = 256 px with the f4 VQGAN)')
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--dtype', choices=['fp32', 'bf16', 'autocast-bf16'], default='fp32')
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--attention', choices=['default', 'mha', 'sdpa', 'both'], default='default',
                    help="Attention2D path: nn.MultiheadAttention module or direct scaled_dot_product_attention")
    ap.add_argument('--byt5-len', type=int, default=77, help='number of ByT5 tokens (caption length + 1)')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device('meta'):
        model = Paella(**asdict(PAELLA_V3))
    dtype = torch.bfloat16 if a.dtype == 'bf16' else torch.float32
    model = model.to_empty(device='cpu').to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters(): p.normal_(0, 0.02)
    n = sum(p.numel() for p in model.parameters())
    print(f'built Paella(byt5_embd=2560): {n:,} params, {a.dtype}, in {time.perf_counter() - t0:.1f} s')
    x = torch.randint(0, 8192, (a.batch, a.size, a.size))
    inp = dict(r=torch.full((a.batch,), 0.5), byt5=torch.randn(a.batch, a.byt5_len, 2560),
               clip=torch.randn(a.batch, 1024), clip_image=torch.randn(a.batch, 1024))
    paths = {'default': [Attention2D.use_sdpa], 'mha': [False], 'sdpa': [True], 'both': [False, True]}[a.attention]
    times = {p: [] for p in paths}
    cpu = {p: [] for p in paths}   # process CPU seconds: less sensitive than wall time to other jobs on the machine
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=a.dtype == 'autocast-bf16'):
        for i in range(a.repeat + 1):   # first round is warm-up; paths interleaved so that load noise hits both
            for p in paths:
                Attention2D.use_sdpa = p
                t0, c0 = time.perf_counter(), time.process_time()
                logits = model(x, **inp)
                times[p].append(time.perf_counter() - t0)
                cpu[p].append(time.process_time() - c0)
    print(f'logits {tuple(logits.shape)} {logits.dtype}')
    for p, ts in times.items():
        print(f"forward ({'SDPA' if p else 'nn.MultiheadAttention'}), batch {a.batch}, {a.size}x{a.size} tokens, "
              f"{a.threads} threads, {a.dtype}: warm-up {ts[0]:.2f} s, then min {min(ts[1:]):.2f} s / "
              f"median {sorted(ts[1:])[len(ts[1:]) // 2]:.2f} s; CPU time min {min(cpu[p][1:]):.2f} s")
    print(f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB')


if __name__ == '__main__':
    main()
