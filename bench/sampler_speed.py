"""Sampling speed: the condition cached and guidance batched (`sample(..., cache=True)`, the default) against the
plain forward at every step (`cache=False`, the blog's loop: today's exact path), measured in the same run,
interleaved, median of the repeats. The cached path also computes GRN's norm as sqrt(sum of squares) (same norm,
other rounding: logits within 1e-5 relative, same tokens, checked here).

    python bench/sampler_speed.py                     # both cases below, fp32, 2 threads
    python bench/sampler_speed.py --case small --repeat 5
    python bench/sampler_speed.py --case released --steps 3 --profile

Cases:
  released  Paella(byt5_embd=2560) with random weights (1.0 B parameters, ~4 GB in fp32), 64x64 tokens (256 px),
            one prompt of 77 ByT5 tokens + CLIP text + CLIP image, an empty prompt (1 token + CLIP text) for
            guidance, cfg 4. Time per sampling step = one `sample` call / steps (the one-off `condition` cost is
            charged to the few steps run here: over 12 steps the fast path gains a little more).
  small     the shipped `shapes-small` pipeline, 64 prompts, 12 steps, cfg from the model (tokens only, no decode).
Both paths must return the same tokens (checked). `--bf16` adds pure-bf16 timings (not exact: bf16 rounding; opt-in).
With CUDA present the released case also runs on the GPU in bf16 and reports s/step for both paths.
"""
import argparse, os, statistics, time
from dataclasses import asdict

import torch
from paella_nb.sampling import sample, PaellaPipeline
from paella_nb.unet import PAELLA_V3, blog_attn_weights, _build_on_meta

PROMPTS = [f"a {s} {c} {k} {w}" for s in ('large', 'small') for c in ('red', 'green', 'blue', 'yellow')
           for k in ('circle', 'square') for w in ('in the center', 'at the top left', 'at the bottom', 'on the right')]


PATHS = ['plain', 'cached']   # cached: the condition once, guidance in one batch, GRN's norm as sqrt(sum of squares)


def timed(fn, repeat, names=PATHS):
    "Run `fn(name)` for each name, `repeat` rounds interleaved (load noise hits all), after one warm-up round."
    times, cpu, out = {n: [] for n in names}, {n: [] for n in names}, {}
    for i in range(repeat + 1):
        for n in names:
            t0, c0 = time.perf_counter(), time.process_time()
            out[n] = fn(n)
            if i: times[n].append(time.perf_counter() - t0); cpu[n].append(time.process_time() - c0)
    print('  CPU-time medians (less sensitive to other jobs): ' + ', '.join(
        f"{n} {statistics.median(cpu[n]):.2f} s ({statistics.median(cpu['plain']) / statistics.median(cpu[n]):.2f}x)"
        for n in names))
    return {n: statistics.median(ts) for n, ts in times.items()}, out


def released(a, device='cpu', dtype=torch.float32):
    torch.manual_seed(0)
    model = _build_on_meta(asdict(PAELLA_V3)).to_empty(device=device).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters(): p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)
    cond = dict(byt5=r(1, 77, 2560), clip=r(1, 1024), clip_image=r(1, 1024))
    uncond = dict(byt5=r(1, 1, 2560), clip=r(1, 1024))
    aw = blog_attn_weights(77).to(device) if a.attn_weights else None
    run = lambda n: sample(model, cond, (1, 64, 64), uncond, steps=a.steps, cfg=4.0, seed=0, attn_weights=aw,
                           cache=n != 'plain')
    t, out = timed(run, a.repeat)
    return {n: v / a.steps for n, v in t.items()}, {n: torch.equal(out['plain'], out[n]) for n in PATHS[1:]}


def small(a, dtype=torch.float32):
    pipe = PaellaPipeline.from_pretrained('shapes-small')
    pipe.unet.to(dtype)
    run = lambda n: pipe(PROMPTS[:a.prompts], seed=0, return_tokens=True, cache=n != 'plain')
    pipe(PROMPTS[:a.prompts], steps=1, return_tokens=True)                      # fill the text cache
    t, out = timed(run, a.repeat)
    return t, {n: torch.equal(out['plain'], out[n]) for n in PATHS[1:]}


def profile(fn, label, rows=8):
    from torch.profiler import profile as prof
    with prof() as p: fn()
    print(f"\n{label}: the {rows} ops with the most CPU time")
    print(p.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--case', choices=['released', 'small', 'both'], default='both')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--repeat', type=int, default=3, help='timed rounds per path (after one warm-up round)')
    ap.add_argument('--steps', type=int, default=2, help='sampling steps per timed call, released case')
    ap.add_argument('--prompts', type=int, default=64, help='prompts, small case')
    ap.add_argument('--attn-weights', action='store_true', help="released case: the blog's attention re-weighting")
    ap.add_argument('--bf16', action='store_true', help='also time pure bf16 (opt-in, not exact)')
    ap.add_argument('--profile', action='store_true', help='small case: print the top ops of one call per path')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    cases = ['small', 'released'] if a.case == 'both' else [a.case]
    for case in cases:
        for dtype in [torch.float32] + ([torch.bfloat16] if a.bf16 else []):
            t, same = (small(a, dtype) if case == 'small' else released(a, dtype=dtype))
            unit = 's per call (12 steps)' if case == 'small' else 's per step'
            print(f"{case:8s} {str(dtype)[6:]:8s} plain {t['plain']:.3f} {unit}; cached {t['cached']:.3f}: "
                  f"{t['plain'] / t['cached']:.2f}x (same tokens: {same['cached']})")
    if a.profile and 'small' in cases:
        pipe = PaellaPipeline.from_pretrained('shapes-small')
        for n in ('plain', 'cached'):
            profile(lambda: pipe(PROMPTS[:a.prompts], seed=0, return_tokens=True, cache=n != 'plain'), n)
    if torch.cuda.is_available() and 'released' in cases:
        torch.backends.cuda.matmul.allow_tf32 = False
        a.steps, a.repeat = 12, 3
        t, same = released(a, device='cuda', dtype=torch.bfloat16)
        print(f"released bf16 on {torch.cuda.get_device_name()}: plain {t['plain']:.3f} s/step, cached "
              f"{t['cached']:.3f} s/step: {t['plain'] / t['cached']:.2f}x (same tokens as plain bf16: {same['cached']})")


if __name__ == '__main__':
    main()
