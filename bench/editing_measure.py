"""Chapter 10's table: every editing operation measured with chapter 09's judge on real held-out pictures, one seed
per picture, and the prior's measurements; writes `data/editing_metrics.json` (the chapter shows it).

    python bench/editing_measure.py                       # 100 pictures per test (about 25 minutes on 2 cores)
    python bench/editing_measure.py --n 20                # a quick look (printed, not written unless --out is given)
    python bench/editing_measure.py --parts prior         # re-measure some parts and update the file
"""
import argparse, json, os, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch

PARTS = ('edit', 'inpaint', 'outpaint', 'interpolation', 'variations', 'conflict', 'prior')

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=100, help='pictures per test')
    ap.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS))
    ap.add_argument('--out', default=None, help='the JSON to write or update (default data/editing_metrics.json when --n >= 100)')
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from paella_nb.data import data_path
    from paella_nb.sampling import PaellaPipeline
    from paella_nb.editing import measure_editing, with_prior
    t0, c0 = time.perf_counter(), time.process_time()
    clip_pipe = PaellaPipeline.from_pretrained('shapes-clip')
    if 'prior' in a.parts: clip_pipe = with_prior(clip_pipe)                      # the shipped small prior
    M = measure_editing(PaellaPipeline.from_pretrained('shapes-small'), clip_pipe, n=a.n, parts=a.parts)
    print(json.dumps(M, indent=1))
    print(f'{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU s, {a.threads} thread(s)')
    out = a.out or (data_path() / 'editing_metrics.json' if a.n >= 100 else None)
    if out:
        old = json.loads(Path(out).read_text()) if Path(out).exists() else {}
        if old and old.get('n') != M['n']: raise SystemExit(f'{out} holds n={old.get("n")}; pass --out to write n={M["n"]} elsewhere')
        merged = {**old, **M, 'seconds_each': {**old.get('seconds_each', {}), **M['seconds_each']}}
        tmp = Path(str(out) + '.tmp'); tmp.write_text(json.dumps(merged, indent=1) + '\n'); os.replace(tmp, out)
        print('wrote', out)

if __name__ == '__main__': main()
