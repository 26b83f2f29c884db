"""How fast the shipped small-data models load and sample on this machine (the README's "works in seconds").

    python bench/small_data_sample.py [--threads 2] [--model shapes-small]
"""
import argparse, os, subprocess, sys, tempfile, time

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--model', action='append', help='shipped model name(s); default: all shipped')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from paella_nb.small_data import SHIPPED, folder_mb, generate
    from paella_nb.sampling import PaellaPipeline, models_dir
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    for name in a.model or SHIPPED:
        t0 = time.perf_counter(); pipe = PaellaPipeline.from_pretrained(name); t_load = time.perf_counter() - t0
        prompt = 'a large red circle at the top left'
        generate(pipe, [prompt])                                                  # warm-up
        t0 = time.perf_counter(); generate(pipe, [prompt]); t1 = time.perf_counter() - t0
        t0 = time.perf_counter(); generate(pipe, [prompt] * 64); t64 = time.perf_counter() - t0
        print(f"{name}: {folder_mb(models_dir() / name):.1f} MB on disk, load {t_load:.2f} s, one image {t1:.2f} s, "
              f"64 images {t64:.2f} s ({t64 / 64 * 1000:.0f} ms/image), {pipe.config['steps']} steps, cfg {pipe.config['cfg']}")
    with tempfile.TemporaryDirectory() as d:                                      # the whole CLI, a fresh process
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, '-m', 'paella_nb.cli', 'sample', 'a large red circle at the top left',
                            '--out', os.path.join(d, 'red.png'), '--seed', '0'],
                           capture_output=True, text=True)
        print(f"CLI `paella_nb sample \"a large red circle at the top left\" --out red.png` (README command 1): {time.perf_counter() - t0:.1f} s wall (exit {r.returncode})")
        if r.returncode: print(r.stderr[-1500:])


if __name__ == '__main__':
    sys.exit(main())
