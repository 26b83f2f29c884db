"""Chapter 09's `#| slow` cells from the command line: train the small-data models, measure them, run the
ablations. Prints the figures and writes them into <root>/<name>/recipe.json.

This is the explicit way to REPLACE the shipped models: with `--ship` it writes data/models/<name> (the folder that
goes into the wheel); without it, it writes into the user cache, `cache_dir('models')`, like the chapter does.

    python bench/small_data_train.py                       # train + measure both models (into the cache), then the ablations
    python bench/small_data_train.py --ship                # ... and replace data/models/<name> (the shipped models)
    python bench/small_data_train.py --only shapes-small   # one model
    python bench/small_data_train.py --skip-train          # re-measure the shipped models
    python bench/small_data_train.py --no-ablations --threads 2
"""
import argparse, json, os, sys, time

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', choices=['shapes-small', 'emoji-small'], action='append', help='train/measure only these')
    p.add_argument('--skip-train', action='store_true', help='measure the models in the target folder as they are (with --ship: the shipped ones)')
    p.add_argument('--no-ablations', action='store_true', help='skip the text-encoder / CLIP / attention ablations')
    p.add_argument('--only-ablations', action='store_true', help='run only the ablations')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads (default 2)')
    p.add_argument('--steps', type=int, default=None, help='override the training steps (quick checks)')
    p.add_argument('--ship', action='store_true', help='replace the shipped models in data/models (default: the user cache)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from dataclasses import replace
    from paella_nb.data import cache_dir
    from paella_nb.sampling import PaellaPipeline, models_dir
    from paella_nb import small_data as R
    root = models_dir() if a.ship else cache_dir('models')

    names = a.only or list(R.RECIPES)
    print(f"threads {torch.get_num_threads()}, cpu_count {os.cpu_count()}, load {os.getloadavg()}", flush=True)
    if not a.only_ablations:
        for name in names:
            rc = R.RECIPES[name]
            if a.steps: rc = replace(rc, train=replace(rc.train, steps=a.steps))
            if not a.skip_train:
                run = R.train_recipe(rc, out_dir=cache_dir('runs') / name, resume=True, progress=False)
                print(name, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in run.info.items()}), flush=True)
                R.ship(run, name, root=root, replace=True)                       # replacing is this script's job
            t0 = time.perf_counter()
            card = R.recipe_card(root / name)
            pipe = PaellaPipeline.from_pretrained(root / name)
            card['metrics'] = R.measure_shapes(pipe) if rc.data == 'shapes' else R.measure_emoji(pipe)
            if rc.data == 'shapes':
                from paella_nb.data import shapes_dataset, images_tensor
                card['metrics']['judge_on_real_images'] = {
                    s: R.judge_shapes(images_tensor(ds), ds) for s in ('test', 'test_compositional')
                    for ds in [shapes_dataset(300, split=s)]}
            card['metrics']['seconds'] = time.perf_counter() - t0
            R.write_card(root / name, card)
            print(name, 'model folder %.1f MB' % R.folder_mb(root / name))
            print(name, json.dumps(card['metrics'], indent=1), flush=True)
    if not a.no_ablations and (a.only is None or 'shapes-small' in a.only):
        base = R.SHAPES_SMALL if not a.steps else replace(R.SHAPES_SMALL, train=replace(R.SHAPES_SMALL.train, steps=a.steps))
        abl = R.ablations(base)
        card = R.recipe_card(root / 'shapes-small'); card['ablations'] = abl
        R.write_card(root / 'shapes-small', card)
        for k, v in abl.items():
            print(k, json.dumps({s: {m: round(x, 3) for m, x in v[s].items()} for s in ('test', 'test_compositional')}),
                  'train %.0f s wall, %.0f s CPU' % (v['info']['train_seconds'], v['info']['train_cpu_seconds']), flush=True)


if __name__ == '__main__':
    sys.exit(main())
