"""Peak memory and load time of the released Paella v3 stack's parts at full size (chapter 14).

Writes fake checkpoints with the released key names and shapes (values are whatever memory held: only loading is
measured) into a temporary folder, in the released formats (`torch.save` of plain state dicts; the ByT5 folder as
config.json + pytorch_model.bin of the encoder), then loads each part in a fresh process through
`ReleasePipeline.load` and reads the kernel's peak resident set (VmHWM). Every weight is touched once after loading
(as a forward pass would), so memory-mapped weights count in full. The libraries are imported before the
process's base memory is read, so that the ratio compares the memory the weights cost with their bytes. The
temporary folder is deleted at the end.

    python bench/release_memory.py [--parts unet,prior,vqgan,byt5,clip] [--dtypes bfloat16,float32] [--pipeline] [--dir /tmp]

`--pipeline` then runs the whole pipeline once (one prompt, 2 prior steps, 2 U-Net steps at 64×64 tokens, decode)
in the first dtype; its ratio is (peak − base) ÷ the bytes of the largest part, the most it ever holds at once.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from dataclasses import asdict
from pathlib import Path

import torch

PARTS = dict(unet='paella_v3.pt', vqgan='vqgan_f4.pt', prior='prior_v1.pt', byt5='byt5-xl', clip='open_clip_pytorch_model.bin')


def write(part, folder: Path):
    """A released-format checkpoint of `part` with zero weights: small tensors are `zeros`, large ones fresh pages
    from the kernel (`empty` above 32 MB is a new memory map: zero, and free until touched)."""
    if part == 'vqgan':
        from paella_nb.vqgan import VQModel
        return torch.save(VQModel().state_dict(), folder / PARTS[part])
    from paella_nb.release import meta_part
    m = meta_part(part)                                                         # shapes only
    new = lambda v: (torch.empty if v.numel() * v.element_size() >= 2**25 else torch.zeros)(v.shape, dtype=v.dtype)
    sd = {k: new(v) for k, v in m.state_dict().items()}
    if part == 'byt5':
        (folder / 'byt5-xl').mkdir()
        sd.pop('encoder.embed_tokens.weight')                                  # tied to shared.weight
        (folder / 'byt5-xl' / 'config.json').write_text(m.config.to_json_string())
        return torch.save(sd, folder / 'byt5-xl' / 'pytorch_model.bin')
    torch.save(sd, folder / PARTS[part])


def measure(part, folder: Path, dtype: str) -> dict:
    "Run in a fresh process: load one part as the pipeline does, touch every weight, report memory and time."
    status = lambda key: int(Path('/proc/self/status').read_text().split(key + ':')[1].split()[0]) * 1024
    from paella_nb.release import ReleasePipeline
    import open_clip, transformers, paella_nb.conditioning                     # the code counts in the base, not the weights
    from transformers import T5EncoderModel
    pipe = ReleasePipeline(*(folder / PARTS[p] for p in ('unet', 'vqgan', 'prior', 'byt5', 'clip')),
                           dtype=getattr(torch, dtype))
    base, t = status('VmRSS'), time.perf_counter()
    model = pipe.load(part)
    seconds = time.perf_counter() - t
    module = getattr(model, 'model', model)                                     # the encoders wrap their model
    held = sum(v.numel() * v.element_size() for v in module.state_dict().values()
               if not (part == 'byt5' and v is module.state_dict().get('encoder.embed_tokens.weight')))
    with torch.no_grad():
        for v in module.state_dict().values(): v.reshape(-1)[::4096 // v.element_size()].float().sum()   # every page
    peak = status('VmHWM')
    return dict(part=part, dtype=dtype, weights_gb=held / 1e9, base_gb=base / 1e9, peak_gb=peak / 1e9,
                ratio=(peak - base) / held, seconds=seconds)


def measure_pipeline(folder: Path, dtype: str) -> dict:
    "Run in a fresh process: the whole pipeline, one prompt, 2 prior and 2 U-Net steps at 64×64 tokens."
    status = lambda key: int(Path('/proc/self/status').read_text().split(key + ':')[1].split()[0]) * 1024
    from paella_nb.release import ReleasePipeline, meta_part, weights_bytes
    import open_clip, transformers, paella_nb.conditioning
    from transformers import T5EncoderModel
    dt = getattr(torch, dtype)
    largest = max(weights_bytes(meta_part(s).state_dict(), dt) for s in ('unet', 'prior', 'byt5', 'clip'))
    pipe = ReleasePipeline(*(folder / PARTS[p] for p in ('unet', 'vqgan', 'prior', 'byt5', 'clip')), dtype=dt)
    base, t = status('VmRSS'), time.perf_counter()
    images = pipe('an oil painting of a red fox in the snow', seed=0, steps=2, renoise_steps=1, prior_steps=2)
    assert images[0].size == (256, 256)
    peak = status('VmHWM')
    return dict(part='all', dtype=dtype, weights_gb=largest / 1e9, base_gb=base / 1e9, peak_gb=peak / 1e9,
                ratio=(peak - base) / largest, seconds=time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--parts', default='unet,prior,vqgan,byt5,clip')
    ap.add_argument('--dtypes', default='bfloat16,float32')
    ap.add_argument('--dir', default=None, help='where the temporary checkpoints go (default: the system temp folder)')
    ap.add_argument('--pipeline', action='store_true', help='also run the whole pipeline once (needs all five parts)')
    ap.add_argument('--measure', nargs=3, help=argparse.SUPPRESS)               # PART FOLDER DTYPE, in the child
    a = ap.parse_args()
    if a.measure:
        part, folder, dtype = a.measure
        r = measure_pipeline(Path(folder), dtype) if part == 'all' else measure(part, Path(folder), dtype)
        print(json.dumps(r)); return
    parts = a.parts.split(',')
    folder = Path(tempfile.mkdtemp(prefix='paella_release_bench_', dir=a.dir))
    try:
        for part in PARTS:                                                      # every slot needs a file to exist
            t = time.perf_counter()
            if part in parts: write(part, folder)
            elif part == 'byt5': (folder / 'byt5-xl').mkdir()
            else: (folder / PARTS[part]).touch()
            if part in parts: print(f'wrote {part} in {time.perf_counter() - t:.0f} s', flush=True)
        print(f"machine: {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), "
              f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB RAM, torch {torch.__version__}")
        print(f"{'part':6} {'dtype':9} {'weights GB':>10} {'peak RSS GB':>11} {'(peak-base)/weights':>20} {'load s':>7}")
        for part in parts + ['all'] * a.pipeline:                           # 'all': the whole pipeline, once
            for dtype in a.dtypes.split(',')[:1] if part == 'all' else a.dtypes.split(','):
                out = subprocess.run([sys.executable, __file__, '--measure', part, str(folder), dtype],
                                     capture_output=True, text=True)
                if out.returncode:
                    print(f"{part:6} {dtype:9} failed: {out.stderr.strip().splitlines()[-1]}", flush=True); continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{part:6} {dtype:9} {r['weights_gb']:10.2f} {r['peak_gb']:11.2f} {r['ratio']:20.3f} "
                      f"{r['seconds']:7.1f}   (process before loading: {r['base_gb']:.2f} GB)", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == '__main__':
    main()
