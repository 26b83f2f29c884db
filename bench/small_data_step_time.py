"""CPU time per training step of a small-data recipe, for two recipes in the same run (interleaved), so that a change
of data (e.g. more two-object scenes, varied drawings) can be checked to cost no more than before.

    python bench/small_data_step_time.py                    # shipped shapes recipe vs the one-drawing, 30%-pairs recipe
    python bench/small_data_step_time.py --steps 60 --threads 1

Each recipe's data is tokenized and embedded as chapter 09 does (cached), then `train` runs `--steps` steps
`--repeat` times per recipe, alternating (a fresh U-Net each time, EMA included as in the recipe); the median CPU
seconds per step is printed."""
import argparse, os, statistics, time
from dataclasses import replace

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TQDM_DISABLE', '1')
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=60)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from paella_nb import small_data as R
    from paella_nb.data import shapes_dataset, images_tensor
    from paella_nb.vqgan import small_vqgan
    from paella_nb.training import train
    new = R.SHAPES_SMALL
    old = replace(new, two_object_frac=0.3, sampling=dict(steps=12, cfg=1.5, temperature=[0.7, 0.3]))
    vq = small_vqgan()
    def canonical_images(rc):                                   # the old data: one canonical drawing per caption
        ds = shapes_dataset(rc.n_images, split='train', two_object_frac=rc.two_object_frac, seed=rc.train.seed,
                            jitter=False)
        return images_tensor(ds), list(ds['caption']), ds, f'shapes-{rc.n_images}-{rc.two_object_frac}-canonical'
    setups, recipe_images = {}, R.recipe_images
    for name, rc, images in (('shipped recipe (70% pairs, varied drawings)', new, recipe_images),
                             ('before (30% pairs, one drawing per caption)', old, canonical_images)):
        R.recipe_images = images                                # recipe_data reads the images through this
        try:
            cond = R.make_conditioner(rc)
            data, _ = R.recipe_data(rc, vq, cond)
        finally: R.recipe_images = recipe_images
        setups[name] = (rc, data, cond)
    times = {n: [] for n in setups}
    for _ in range(a.repeat):
        for name, (rc, data, cond) in setups.items():
            unet = R.build_unet(rc, vq, cond)
            cfg = replace(rc.train, steps=a.steps, ckpt_every=0)
            c0 = time.process_time()
            res = train(unet, data, cfg, progress=False)
            times[name].append((time.process_time() - c0) / a.steps)
    base = statistics.median(times['before (30% pairs, one drawing per caption)'])
    for name, ts in times.items():
        print(f"{name}: {statistics.median(ts):.3f} CPU s per step ({statistics.median(ts) / base:.2f}x), "
              f"{a.threads} thread(s); x {R.SHAPES_SMALL.train.steps} steps = {statistics.median(ts) * R.SHAPES_SMALL.train.steps / 60:.1f} CPU min")


if __name__ == '__main__':
    main()
