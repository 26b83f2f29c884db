"""Train the course's small CLIP (chapter 08) on the CPU, time it, evaluate it, and optionally ship it.

    python bench/clip_train.py                 # full run, prints time and numbers
    python bench/clip_train.py --save          # ... and writes data/small_clip.safetensors (+ .json), atomically
    python bench/clip_train.py --steps 50      # a quick check

Timing is wall-clock on whatever CPU this runs on (the course target: <= 10 minutes on 2 cores).
"""
import argparse, dataclasses, json, os, platform, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from paella_nb.clip import (ClipConfig, ClipTrainConfig, clip_training_data, train_small_clip, save_small_clip,
                            load_small_clip, clip_r_precision, clip_retrieval)
from paella_nb.data import shapes_dataset, emoji_dataset, images_tensor, data_path


def evaluate(clip) -> dict:
    sets = {'shapes1': shapes_dataset(1000, split='test'),
            'shapes2': shapes_dataset(500, split='test', seed=1, two_object_frac=1.0),
            'emoji': emoji_dataset(split='test')}
    out = {}
    for k, ds in sets.items():
        x, caps = images_tensor(ds), list(ds['caption'])
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
        out[k] = dict(rp_real=clip_r_precision(x, caps, clip=clip), rp_noise=clip_r_precision(noise, caps, clip=clip),
                      **clip_retrieval(x, caps, clip=clip))
    return {k: {m: round(v, 4) for m, v in d.items()} for k, d in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=None)
    ap.add_argument('--save', action='store_true', help='write data/small_clip.safetensors')
    ap.add_argument('--out', default=None, help='save somewhere else instead')
    a = ap.parse_args()
    cfg, tcfg = ClipConfig(), ClipTrainConfig()
    if a.steps: tcfg = dataclasses.replace(tcfg, steps=a.steps)
    t0 = time.time(); data = clip_training_data(tcfg); t_data = time.time() - t0
    print(f"data: {len(data['captions'])} pairs in {t_data:.1f}s; torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    model, hist = train_small_clip(cfg, tcfg, data=data, log_every=100)
    th = torch.get_num_threads()
    print(f"training: {hist['seconds']:.0f}s = {hist['seconds']/60:.1f} min wall for {tcfg.steps} steps "
          f"({hist['seconds']/tcfg.steps:.2f} s/step); CPU time {hist['cpu_seconds']:.0f}s on {th} threads "
          f"(≈ {hist['cpu_seconds']/th/60:.1f} min if the cores were ours alone); load average now "
          f"{os.getloadavg()[0]:.1f} (a shared CPU inflates the wall time)", flush=True)
    path = a.out or (str(data_path() / 'small_clip.safetensors') if a.save else '/tmp/small_clip_bench.safetensors')
    meta = dict(model=dataclasses.asdict(cfg), train=dataclasses.asdict(tcfg), train_seconds=round(hist['seconds'], 1),
                train_cpu_seconds=round(hist['cpu_seconds'], 1), threads=torch.get_num_threads(),
                load_average=round(os.getloadavg()[0], 1),
                data_seconds=round(t_data, 1), steps=tcfg.steps, batch_size=tcfg.batch_size,
                final_loss=round(sum(hist['loss'][-50:]) / len(hist['loss'][-50:]), 4),
                machine=f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}")
    save_small_clip(model, cfg, path, metadata=meta)
    clip = load_small_clip(path)
    res = evaluate(clip)
    meta['eval'] = res
    save_small_clip(model, cfg, path, metadata=meta)                     # again, with the numbers in the metadata
    print(json.dumps(res, indent=1))
    print(f"saved {path}: {os.path.getsize(path)/1e6:.2f} MB")


if __name__ == '__main__':
    main()
