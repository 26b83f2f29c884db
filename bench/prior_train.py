"""Train the course's small prior (text embedding → image embedding of the small CLIP) on the CPU, time it, measure
how much nearer the real image embedding its samples land than the text embedding does, and optionally ship it.

    python bench/prior_train.py                 # full run: params, CPU seconds, the cosine table
    python bench/prior_train.py --save          # ... and writes data/small_prior.safetensors, atomically
    python bench/prior_train.py --steps 300     # a quick check

Timing is the process's CPU time on one thread (the course target: a few CPU minutes).
"""
import argparse, dataclasses, json, os, platform, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from paella_nb.editing import (PRIOR_SMALL, PriorTrainConfig, prior_training_data, train_prior, save_small_prior,
                               load_small_prior, measure_prior)
from paella_nb.small_data import small_clip_encoder
from paella_nb.data import data_path

SPLITS = ('test', 'test_compositional')


def _round(v):
    return round(v, 4) if isinstance(v, float) else [_round(x) for x in v] if isinstance(v, list) else v


def table(res: dict) -> str:
    rows = [f"{'split':<20}{'cos text':>10}{'cos prior':>11}{'avg of 3':>10}{'R@1 text':>10}{'R@1 prior':>11}{'R@1 image':>11}"]
    for s, r in res.items():
        rows.append(f"{s:<20}{r['cos_text']:>10.4f}{r['cos_prior']:>11.4f}{r['cos_prior_avg']:>10.4f}"
                    f"{r['r1_text']:>10.3f}{r['r1_prior']:>11.3f}{r['r1_image']:>11.3f}")
    return '\n'.join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=None)
    ap.add_argument('--n', type=int, default=300, help='held-out prompts per split')
    ap.add_argument('--save', action='store_true', help='write data/small_prior.safetensors')
    ap.add_argument('--out', default=None, help='save somewhere else instead')
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg, tcfg = PRIOR_SMALL, PriorTrainConfig()
    if a.steps: tcfg = dataclasses.replace(tcfg, steps=a.steps)
    enc = small_clip_encoder()
    t0 = time.time(); data = prior_training_data(tcfg.n_images, tcfg.two_object_frac, seed=tcfg.seed, encoder=enc)
    t_data = time.time() - t0
    model, hist = train_prior(cfg, tcfg, data)
    params = sum(p.numel() for p in model.parameters())
    print(f"prior {dataclasses.asdict(cfg)}: {params:,} params; data {len(data['text'])} pairs in {t_data:.1f}s")
    print(f"training: {tcfg.steps} steps of {tcfg.batch_size} in {hist['cpu_seconds']:.0f} CPU s on "
          f"{torch.get_num_threads()} thread ({hist['seconds']:.0f} s wall, load average {os.getloadavg()[0]:.1f})")
    res = {s: measure_prior(model, s, n=a.n, encoder=enc) for s in SPLITS}
    print(table(res))
    path = a.out or (str(data_path() / 'small_prior.safetensors') if a.save else '/tmp/small_prior_bench.safetensors')
    meta = dict(model=dataclasses.asdict(cfg), train=dataclasses.asdict(tcfg), params=params,
                train_cpu_seconds=round(hist['cpu_seconds'], 1), train_seconds=round(hist['seconds'], 1),
                threads=torch.get_num_threads(), final_loss=round(sum(hist['loss'][-200:]) / len(hist['loss'][-200:]), 4),
                eval={s: {k: _round(v) for k, v in r.items()} for s, r in res.items()},
                machine=f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}")
    save_small_prior(model, path, metadata=meta)
    again = load_small_prior(path)
    assert all(torch.equal(a_, b_) for a_, b_ in zip(again.state_dict().values(), model.state_dict().values()))
    print(f"saved {path}: {os.path.getsize(path)/1e6:.2f} MB")


if __name__ == '__main__':
    main()
