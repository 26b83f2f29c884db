"""`paella_nb sample "a red circle" --out x.png` end to end, against `python -c "import torch"`, on this machine.

    python bench/cli_startup.py             # median of 5 runs each, interleaved; prints the ratio (target <= 2)
    python bench/cli_startup.py --runs 9

Also says which heavy modules the command imported (it should need none of transformers, torch._dynamo,
matplotlib, open_clip, datasets, sentence_transformers).
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HEAVY = ('transformers', 'torch._dynamo', 'matplotlib', 'open_clip', 'datasets', 'sentence_transformers')


def wall(cmd, env):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--model', default='shapes-small')
    a = ap.parse_args()
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
    out = Path(tempfile.mkdtemp()) / 'x.png'
    cli = [shutil.which('paella_nb') or sys.executable, *([] if shutil.which('paella_nb') else ['-m', 'paella_nb.cli'])]
    cmds = {'import torch': [sys.executable, '-c', 'import torch'],
            'paella_nb sample': cli + ['sample', 'a red circle', '--out', str(out), '--seed', '0', '--model', a.model]}
    times = {k: [] for k in cmds}
    wall(cmds['import torch'], env)                                   # warm the file cache once
    for _ in range(a.runs):
        for k, c in cmds.items(): times[k].append(wall(c, env))
    probe = ("import sys; from paella_nb.cli import main; main(['sample', 'a red circle', '--out', %r, '--seed', '0', "
             "'--model', %r]); print([m for m in %r if m in sys.modules])" % (str(out), a.model, HEAVY))
    heavy = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items(): print(f"{k:18s} median {med[k]:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"ratio sample / import torch: {med['paella_nb sample'] / med['import torch']:.2f}  (target <= 2)")
    print(f"heavy modules imported by the command: {heavy}   load average {os.getloadavg()[0]:.1f}")


if __name__ == '__main__':
    main()
