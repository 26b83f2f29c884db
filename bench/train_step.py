"""Time one training step of the tiny U-Net in fp32 and with bf16 autocast (and fp16 + GradScaler on a GPU).

    python bench/train_step.py                  # CPU: fp32 vs bf16 autocast
    python bench/train_step.py --device cuda    # GPU: fp32 vs bf16 vs fp16
    python bench/train_step.py --grid 16 --batch 64 --threads 2

It runs `paella_nb.training.train` itself (the real loop: conditioning, noising, forward, loss, backward, clipping,
AdamW, scheduler) with `log_every=1`, drops the first `--warmup` steps, and prints the median seconds per step."""
import argparse, os, statistics, sys
from dataclasses import asdict

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch

from paella_nb.conditioning import CFGDropout
from paella_nb.training import TokenData, TrainConfig, train
from paella_nb.unet import Paella, PAELLA_TINY


def time_steps(precision, args):
    torch.manual_seed(0)
    model = Paella(**asdict(PAELLA_TINY))
    g = torch.Generator().manual_seed(0)
    n = max(4 * args.batch, 64)
    data = TokenData(torch.randint(0, model.num_labels, (n, args.grid, args.grid), generator=g),
                     cond={'byt5': torch.randn(n, 24, model.byt5_embd, generator=g)},
                     uncond={'byt5': torch.randn(1, 1, model.byt5_embd, generator=g)})
    cfg = TrainConfig.tiny(steps=args.warmup + args.steps, batch_size=args.batch, log_every=1, precision=precision,
                           device=args.device, dropout=CFGDropout())
    if args.device == 'cuda': torch.cuda.synchronize()
    h = train(model, data, cfg, progress=False).history['seconds']
    dt = [b - a for a, b in zip(h[args.warmup - 1:], h[args.warmup:])]   # log_every=1 syncs every step
    return statistics.median(dt), min(dt)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batch', type=int, default=16, help='token grids per step (TrainConfig.tiny: 16)')
    p.add_argument('--grid', type=int, default=8, help='token grid side (32 px shapes with the f4 VQGAN: 8)')
    p.add_argument('--steps', type=int, default=20, help='timed steps per precision')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps first')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave the default)')
    args = p.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    if args.device == 'cuda' and not torch.cuda.is_available(): sys.exit('no CUDA device here')
    where = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f"tiny U-Net (PAELLA_TINY, {sum(p.numel() for p in Paella(**asdict(PAELLA_TINY)).parameters()):,} params), "
          f"batch {args.batch}, {args.grid}x{args.grid} tokens, {where}, torch {torch.__version__}")
    precisions = ['fp32', 'bf16'] + (['fp16'] if args.device == 'cuda' else [])
    res = {}
    for prec in precisions:
        med, best = res[prec] = time_steps(prec, args)
        print(f"  {prec:5}: median {med * 1e3:7.1f} ms/step  (best {best * 1e3:6.1f} ms)")
    for prec in precisions[1:]:
        print(f"  {prec} / fp32 time ratio: {res[prec][0] / res['fp32'][0]:.2f}x "
              f"({'slower' if res[prec][0] > res['fp32'][0] else 'faster'} than fp32)")
    return res


if __name__ == '__main__':
    main()
