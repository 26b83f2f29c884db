"""Why do unseen colour-shape pairs come out as patchworks? Measurements on a shapes model (chapter 09's judge).

    python bench/small_data_diagnose.py                      # the shipped shapes-small
    python bench/small_data_diagnose.py --model PATH --n 150

Prints, for `test_compositional` (and `test` for comparison):
  1. the tokenizer's ceiling: the judge on real images after a round trip through the model's VQGAN;
  2. when the picture is decided: at each of the 12 steps, the judge's reading of that step's draw (all tokens
     predicted at once) - how often its colour / shape already equal the final image's, and how often they are right;
  3. what the errors are: the colours and shapes read where the final image is wrong or not clean;
  4. guidance and temperature: `clean` at a few settings (one knob at a time from the model's defaults).
"""
import argparse, collections, time
import numpy as np, torch
from paella_nb.data import shapes_dataset, images_tensor
from paella_nb.sampling import PaellaPipeline
from paella_nb.small_data import judge_shapes, eval_shapes, step_readings, ATTRIBUTES


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='shapes-small')
    ap.add_argument('--n', type=int, default=150)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--no-sweep', action='store_true')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = PaellaPipeline.from_pretrained(a.model)
    print(f"model {a.model}, defaults cfg {pipe.config['cfg']}, temperature {pipe.config['temperature']}, n {a.n}")
    for split in ('test', 'test_compositional'):
        ds = shapes_dataset(a.n, split=split)
        real = images_tensor(ds)
        with torch.no_grad():
            rt = pipe.vqgan.decode_indices(pipe.vqgan.encode(real)[2]).float().clamp(0, 1)
        j = judge_shapes(rt, ds)
        print(f"\n[{split}] 1. tokenizer round trip of real images: all {j['all']:.3f}, clean {j['clean']:.3f}")
        t0 = time.perf_counter()
        steps = step_readings(pipe, ds['caption'])
        final = steps[-1]
        truth = [{k: ds[k][i] for k in ATTRIBUTES} for i in range(len(ds))]
        print(f"[{split}] 2. step: colour as final / colour right / shape as final / shape right / purity (mean)")
        for s, reads in enumerate(steps):
            f = lambda k, ref: np.mean([r[k] == q[k] for r, q in zip(reads, ref)])
            print(f"   {s + 1:2d}: {f('color', final):.2f} / {f('color', truth):.2f} / {f('shape', final):.2f} / "
                  f"{f('shape', truth):.2f} / {np.mean([r['purity'] for r in reads]):.2f}")
        wrong = [(r, t) for r, t in zip(final, truth) if any(r[k] != t[k] for k in ATTRIBUTES) or r['purity'] < 0.8]
        conf = collections.Counter(f"asked {t['color']} {t['shape']} -> read {r['color']} {r['shape']}"
                                   f"{' (patchy)' if r['purity'] < 0.8 else ''}" for r, t in wrong)
        print(f"[{split}] 3. {len(wrong)} of {len(final)} wrong or not clean; most common:")
        for k, v in conf.most_common(8): print(f"   {v:3d}  {k}")
        print(f"   ({time.perf_counter() - t0:.0f} s)")
    if a.no_sweep: return
    print("\n4. clean on test_compositional (all in brackets), one knob at a time:")
    for kw in (dict(cfg=1.0), dict(cfg=1.5), dict(cfg=2.0), dict(cfg=3.0), dict(temperature=(0.3, 0.05)),
               dict(temperature=(1.0, 1.0)), dict(renoise_steps=6)):
        r = eval_shapes(pipe, 'test_compositional', a.n, **kw)
        print(f"   {kw}: clean {r['clean']:.3f} (all {r['all']:.3f})")


if __name__ == '__main__':
    main()
