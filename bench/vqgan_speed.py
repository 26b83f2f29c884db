"""Speed of the course tokenizer on this machine: training step time (→ projected time of the shipped 3,000-step
run) and tokenize / detokenize throughput of `small_vqgan()`.

    OMP_WAIT_POLICY=PASSIVE python bench/vqgan_speed.py [--threads 2] [--steps 20]

On a shared, oversubscribed CPU, OpenMP's default busy-waiting makes 2 threads many times slower than 1;
OMP_WAIT_POLICY=PASSIVE avoids that. The load average is printed so the numbers can be judged.
"""
import argparse, os, time
import torch
from paella_nb.vqgan import VQModel, VQTrainConfig, train_vqgan, small_vqgan, SMALL_VQGAN_CONFIG, SMALL_VQGAN_QUANTIZER

p = argparse.ArgumentParser()
p.add_argument('--threads', type=int, default=2)
p.add_argument('--steps', type=int, default=20)
a = p.parse_args()
torch.set_num_threads(a.threads)
print(f'threads {a.threads}, OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "(default)")}, '
      f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')

x = torch.rand(2048, 3, 32, 32)
cfg = VQTrainConfig()
m = VQModel(**SMALL_VQGAN_CONFIG, **SMALL_VQGAN_QUANTIZER)
train_vqgan(m, x, steps=3, progress=False)                                        # warm-up
t = time.time(); train_vqgan(m, x, steps=a.steps, progress=False); dt = (time.time() - t) / a.steps
print(f'train step (batch {cfg.batch_size}): {dt * 1000:.0f} ms → {cfg.steps} steps in {dt * cfg.steps / 60:.1f} min')

v = small_vqgan()
with torch.inference_mode():
    v.encode_indices(x[:256]); t = time.time(); ids = v.encode_indices(x); te = time.time() - t
    t = time.time(); v.decode_indices(ids); td = time.time() - t
print(f'encode_indices: {len(x) / te:,.0f} images/s · decode_indices: {len(x) / td:,.0f} images/s (32×32)')
