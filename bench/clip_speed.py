"""How long does training the small CLIP (chapter 08) take? Times a few steps of the real config and projects the run.

    python bench/clip_speed.py            # 40 steps of ClipConfig() / ClipTrainConfig()
    python bench/clip_speed.py --steps 100

Prints wall-clock and CPU seconds per step. On a CPU shared with other jobs the wall time is inflated; the CPU time of
this process divided by its thread count estimates what the run takes with the cores to itself.
"""
import argparse, dataclasses, os, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from paella_nb.clip import ClipConfig, ClipTrainConfig, clip_training_data, train_small_clip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=40)
    a = ap.parse_args()
    full = ClipTrainConfig()
    tcfg = dataclasses.replace(full, steps=a.steps)
    t0 = time.time(); data = clip_training_data(full); t_data = time.time() - t0
    load0 = os.getloadavg()[0]
    _, hist = train_small_clip(ClipConfig(), tcfg, data=data, log_every=0)
    th = torch.get_num_threads()
    wall, cpu = hist['seconds'] / a.steps, hist['cpu_seconds'] / a.steps
    print(f"threads {th}, load average {load0:.1f} → {os.getloadavg()[0]:.1f} ({os.cpu_count()} cpus)")
    print(f"data: {t_data:.1f}s (cached after the first run)")
    print(f"per step: wall {wall:.3f}s, CPU {cpu:.3f}s (all threads)")
    print(f"full run ({full.steps} steps): wall at this load {wall * full.steps / 60:.1f} min; "
          f"with the {th} cores to itself ≈ {cpu * full.steps / th / 60:.1f} min")


if __name__ == '__main__':
    main()
