"""Peak memory of loading a released-size checkpoint (fp32 on disk, 4.03 GB) into a bf16 model.

    python bench/unet_load.py            # writes a random 4 GB checkpoint to a temp dir, loads it, deletes it
    python bench/unet_load.py --naive    # also measure the naive way (fp32 model + torch.load + .to(bf16))

`load_paella(path, dtype=torch.bfloat16, byt5_embd=2560)` builds the model on the meta device, memory-maps the file,
casts tensor by tensor and installs the tensors with `load_state_dict(assign=True)`: no fp32 copy is held in
anonymous memory (the memory-mapped file's pages show up in RSS as file-backed, reclaimable page cache; the script
reports anonymous and file-backed peaks separately). Each load runs in its own subprocess so that peak RSS (ru_maxrss) is measured separately.
Needs ~9 GB free disk/RAM headroom (the naive path peaks at ~8 GB).
"""
import argparse, os, resource, subprocess, sys, tempfile, time
from dataclasses import asdict
from pathlib import Path

import torch
from paella_nb.unet import Paella, PAELLA_V3, load_paella

CHILD = r'''
import resource, sys, threading, time, torch
from dataclasses import asdict
from paella_nb.unet import Paella, PAELLA_V3, load_paella
path, mode = sys.argv[1], sys.argv[2]
peak = {'RssAnon': 0, 'RssFile': 0}
def sample():   # anonymous memory (heap: real copies) vs file-backed pages (the memory-mapped checkpoint, reclaimable)
    while True:
        for line in open('/proc/self/status'):
            k = line.split(':')[0]
            if k in peak: peak[k] = max(peak[k], int(line.split()[1]))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
if mode == 'meta':
    m = load_paella(path, dtype=torch.bfloat16, **asdict(PAELLA_V3))
else:   # naive: fp32 model with random init, full state dict in RAM, then cast
    m = Paella(**asdict(PAELLA_V3))
    m.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    m = m.to(torch.bfloat16).eval()
dt = time.perf_counter() - t0
n = sum(p.numel() for p in m.parameters())
assert all(p.dtype == torch.bfloat16 for p in m.parameters())
print(f'{mode:5s}: {n:,} bf16 params ({n * 2 / 2**30:.2f} GiB) loaded in {dt:.1f} s, '
      f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB '
      f'(peak anonymous {peak["RssAnon"] / 2**20:.2f} GiB, peak file-backed {peak["RssFile"] / 2**20:.2f} GiB)')
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--naive', action='store_true')
    ap.add_argument('--dir', default=None, help='where to write the temporary checkpoint')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = Path(d) / 'paella_v3_random.pt'
        t0 = time.perf_counter()
        with torch.device('meta'):
            m = Paella(**asdict(PAELLA_V3))
        m = m.to_empty(device='cpu')
        with torch.no_grad():
            for p in m.parameters(): p.normal_(0, 0.02)
        torch.save(m.state_dict(), path)
        del m
        print(f'wrote a random fp32 checkpoint: {path.stat().st_size:,} bytes in {time.perf_counter() - t0:.1f} s')
        for mode in ['meta'] + (['naive'] if a.naive else []):
            subprocess.run([sys.executable, '-c', CHILD, str(path), mode], check=True)


if __name__ == '__main__':
    main()
