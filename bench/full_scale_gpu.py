"""Time the released Paella v3 training step on one GPU (chapter 13, `paella_nb.cost_model`).

    python bench/full_scale_gpu.py                      # micro-batches 8, 16, 32; plain, then activation checkpointing
    python bench/full_scale_gpu.py --micro 16 --compile # one size, torch.compile'd
    python bench/full_scale_gpu.py --encoders           # also time the ByT5-XL encoder (random weights) at L=128
    python bench/full_scale_gpu.py --smoke              # CPU, tiny model: checks that the script runs (no GPU)

Self-contained: no data files, no downloads. Random token grids [B, 64, 64] (a 256 px image through the f4 VQGAN),
random ByT5-XL states [B, L, 2560] and CLIP-H vectors [B, 1024]. One step is what `train_full` does per
micro-batch: chapter 06's `training_step` (noise, forward, Paella's loss) under bf16 autocast, backward, grad clip,
fused AdamW.
Prints step time, images/s, tokens/s, MFU against the GPU's dense bf16 peak (FLOPs counted on the meta device,
training = 3 x forward), peak memory, and what the release's 1.3M steps x 2048 images would cost at the measured
speed. Takes about 2-4 minutes on an H100 (most of it building the 1B model).
"""
import argparse, json, sys, time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))     # run from a checkout without installing
import torch
from paella_nb.unet import Paella, PAELLA_V3
from paella_nb.cost_model import model_flops, gpu_peak_flops, bench_step, BYT5_XL
from paella_nb.full_scale import apply_activation_checkpointing, TINY_MODEL


def bench_byt5(text_len, peak, dev, smoke):
    "Forward time of the ByT5-XL encoder (random weights, bf16) per caption."
    from transformers import T5Config, T5EncoderModel
    from torch.utils.flop_counter import FlopCounterMode
    c = T5Config(**(dict(BYT5_XL, num_layers=1, d_model=64, d_ff=64, num_heads=2) if smoke else BYT5_XL),
                 is_encoder_decoder=False, use_cache=False)
    with torch.device('meta'): m = T5EncoderModel(c)
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad(): m(input_ids=torch.zeros(1, text_len, dtype=torch.long, device='meta'))
    f_enc = fc.get_total_flops()
    with torch.device(dev): t5 = T5EncoderModel(c).to(torch.bfloat16 if dev.type == 'cuda' else torch.float32).eval()
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    out = []
    for B in ((2,) if smoke else (16, 64)):
        ids = torch.randint(3, 259, (B, text_len), device=dev)
        with torch.no_grad():
            for _ in range(2): t5(input_ids=ids)
            sync(); t0 = time.perf_counter()
            for _ in range(5): t5(input_ids=ids)
            sync(); dt = (time.perf_counter() - t0) / 5
        mfu = B / dt * f_enc / peak if peak else float('nan')
        print(f"ByT5-XL encoder forward (bf16, L={text_len}), batch {B}: {dt * 1e3:.0f} ms = {dt / B * 1e3:.2f} ms per "
              f"caption, {f_enc / 1e9:.0f} GFLOP per caption, MFU {mfu:.1%}")
        out.append(dict(mode='byt5_xl', batch=B, s=dt, captions_per_s=B / dt, mfu=mfu))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--micro', type=int, nargs='+', default=None, help="micro-batch sizes (default 8 16 32)")
    p.add_argument('--steps', type=int, default=6, help="timed steps per size (median reported; default 6)")
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--text-len', type=int, default=128, help="ByT5 tokens per caption (bytes + EOS; default 128)")
    p.add_argument('--mode', choices=['plain', 'ckpt', 'both'], default='both',
                   help="activation checkpointing off, on, or both (default both)")
    p.add_argument('--compile', action='store_true', help="torch.compile the U-Net (adds minutes of compile time)")
    p.add_argument('--encoders', action='store_true', help="also time the ByT5-XL encoder forward (random weights, bf16)")
    p.add_argument('--smoke', action='store_true', help="tiny model on the CPU: check the script, not the speed")
    p.add_argument('--json', default=None, help="also write the results to this JSON file")
    a = p.parse_args(argv)
    if a.smoke:
        dev, cfg, latent = torch.device('cpu'), dict(TINY_MODEL), 16
        micro, a.steps, a.warmup = a.micro or [2, 4], min(a.steps, 2), 1
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU: this benchmark needs one (use --smoke to check the script on a CPU; the cost model "
                     "of chapter 13 runs anywhere).")
        dev, cfg, latent, micro = torch.device('cuda'), asdict(PAELLA_V3), 64, a.micro or [8, 16, 32]
        torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU (smoke test)'
    peak = gpu_peak_flops() if dev.type == 'cuda' else None
    f_train = 3 * model_flops(cfg, latent, a.text_len)['forward']
    print(f"{name}, torch {torch.__version__}, dense bf16 peak "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (no MFU)'} | Paella({'tiny' if a.smoke else 'byt5_embd=2560'}): "
          f"training {f_train / 1e12:.3f} TFLOP per image (3 x forward, {latent}x{latent} tokens, L={a.text_len})", flush=True)
    t0 = time.time()
    torch.manual_seed(0)
    model = Paella(**cfg).to(dev)
    model.validate_inputs = False
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({'fused': True} if dev.type == 'cuda' else {}))
    print(f"{n_params:,} parameters, built in {time.time() - t0:.0f} s", flush=True)
    results = []
    print(f"{'mode':>6} {'micro':>5} {'step ms':>8} {'img/s':>7} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9}")
    for mode in (['plain', 'ckpt'] if a.mode == 'both' else [a.mode]):
        if mode == 'ckpt': apply_activation_checkpointing(model)
        fwd = torch.compile(model) if a.compile else None
        for B in micro:
            try: r = bench_step(model, opt, B, a.steps, a.warmup, a.text_len, latent, fwd)
            except torch.OutOfMemoryError:
                opt.zero_grad(set_to_none=True); torch.cuda.empty_cache()
                print(f"{mode:>6} {B:>5}   out of memory"); results.append(dict(mode=mode, micro_batch=B, oom=True)); continue
            r.update(mode=mode, mfu=r['images_per_s'] * f_train / peak if peak else None)
            results.append(r)
            mem = f"{r['peak_mem_gib']:.1f}" if r['peak_mem_gib'] is not None else '-'
            mfu = f"{r['mfu']:.1%}" if r['mfu'] is not None else '-'
            print(f"{mode:>6} {B:>5} {r['step_s'] * 1e3:>8.0f} {r['images_per_s']:>7.1f} {r['tokens_per_s']:>9.0f} "
                  f"{mfu:>6} {mem:>9}", flush=True)
            if dev.type == 'cuda': torch.cuda.empty_cache()
    ok = [r for r in results if not r.get('oom')]
    plain = [r for r in ok if r['mode'] == 'plain'] or ok
    if plain:
        best = max(plain, key=lambda r: r['images_per_s'])
        gpu_days = 2048 * 1_300_000 / best['images_per_s'] / 86400
        print(f"\nbest ({best['mode']}, micro-batch {best['micro_batch']}): {best['images_per_s']:.1f} img/s per GPU"
              + (f", MFU {best['mfu']:.1%}" if best['mfu'] else ''))
        if not a.smoke:
            print(f"the release's 1.3M steps x 2048 images at this speed: {gpu_days:,.0f} GPU-days = {gpu_days / 128:.1f} "
                  f"days on 128 such GPUs (U-Net only, i.e. pre-encoded data; assumes perfect scaling)")
        with_mem = sorted((r for r in plain if r.get('peak_mem_gib')), key=lambda r: r['micro_batch'])
        if len(with_mem) >= 2:
            r0, r1 = with_mem[0], with_mem[-1]
            per_img = (r1['peak_mem_gib'] - r0['peak_mem_gib']) / (r1['micro_batch'] - r0['micro_batch'])
            print(f"activation memory {per_img:.2f} GiB per image (slope of peak memory over micro-batch); fixed part "
                  f"{r0['peak_mem_gib'] - per_img * r0['micro_batch']:.1f} GiB, of which AdamW training state "
                  f"(16 B/param) is {n_params * 16 / 2**30:.1f} GiB")
    del model, opt
    if dev.type == 'cuda': torch.cuda.empty_cache()
    if a.encoders: results += bench_byt5(a.text_len, peak, dev, a.smoke)
    if a.json: Path(a.json).write_text(json.dumps(dict(gpu=name, peak=peak, results=results), indent=1))
    return results


if __name__ == '__main__':
    main()
