"""Train the course tokenizer on the CPU and measure it (the same code as the #| slow cells of nbs/02_vqgan.ipynb).

    python bench/vqgan_train.py                 # k-means baseline + both quantisers; ships data/small_vqgan.*
    python bench/vqgan_train.py --arms kmeans   # one part only (kmeans, ema, plain); merges into the json

Writes data/small_vqgan.safetensors (the EMA + restarts model) and data/small_vqgan.json (all measured numbers).
"""
import argparse, json, os, platform, time
import torch
from paella_nb.vqgan import train_small_vqgan, vqgan_course_data, kmeans_baseline, save_vqgan
from paella_nb.data import data_path, atomic_write

p = argparse.ArgumentParser()
p.add_argument('--arms', default='kmeans,ema,plain')
p.add_argument('--steps', type=int, default=None, help='override the number of steps (for a quick check)')
p.add_argument('--out', default=str(data_path() / 'small_vqgan'))
p.add_argument('--threads', type=int, default=2)
p.add_argument('--progress', action='store_true', help='show a progress bar')
a = p.parse_args()
torch.set_num_threads(a.threads)
js = a.out + '.json'
res = json.load(open(js)) if os.path.exists(js) else {}
res['measured_by'] = ('bench/vqgan_train.py = the #| slow cells of nbs/02_vqgan.ipynb, on ' +
                      f'{platform.machine()} CPU, {a.threads} threads (a shared machine: timings are inflated)')
data = vqgan_course_data()
kw = {} if a.steps is None else {'steps': a.steps}
def dump(): atomic_write(js, lambda tmp: open(tmp, 'w').write(json.dumps(res, indent=1)))
for arm in a.arms.split(','):
    t = time.time()
    if arm == 'kmeans':
        res['kmeans'] = kmeans_baseline(data); res['kmeans_seconds'] = time.time() - t
    elif arm in ('ema', 'plain'):
        q = None if arm == 'ema' else dict(ema=False, restart_after=0)
        model, m = train_small_vqgan(quantizer=q, data=data, progress=a.progress, **kw)
        res['shipped' if arm == 'ema' else 'plain_vq'] = m
        if arm == 'ema': save_vqgan(model, a.out + '.safetensors', metadata={'quantizer': m['quantizer']})
    print(arm, f'{time.time() - t:.0f}s', json.dumps({k: v for k, v in res.get({'ema': 'shipped', 'plain': 'plain_vq'}.get(arm, arm), {}).items() if k != 'log'})[:600], flush=True)
    dump()
