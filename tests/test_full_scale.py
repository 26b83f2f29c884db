"""Chapter 12 (paella_nb.full_scale): the full-scale trainer on a 2-core CPU with the gloo backend.

What is checked (tiny config, shards built from the shapes data):
- 2 processes (DDP, gloo) follow the 1-process run at the same global batch: losses within 1e-4 relative,
  final weights within 1e-6 (measured: identical);
- 2 processes with FSDP2 + activation checkpointing, stopped and resumed from a torch.distributed.checkpoint: same
  losses as the 1-process DDP run;
- kill -9 after step 7 of 10, resume: weights and AdamW state bit-identical to the uninterrupted run;
- a corrupt JPEG, a sample without caption and a truncated tar are skipped and counted, the run goes on;
- a diverging run (NaN loss, or NaN weights) stops before writing and names its last good checkpoint;
  temporary files of a killed save are removed at the next start;
- bad input: clear errors.
"""
import json, os, shutil, signal, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

import paella_nb.full_scale as fs
from paella_nb.full_scale import (FullConfig, tiny_config, load_config, save_config, check_config, lr_factor, launch,
                                  init_distributed, apply_activation_checkpointing, TINY_MODEL, _free_port)
from paella_nb.shards import DataConfig, prepare_shards, damage_shards, iter_tar, resolve_shards
from paella_nb.unet import Paella
from paella_nb.training import read_checkpoint, list_checkpoints
from paella_nb.data import TEMP_PREFIX

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp('shards')/'shapes'
    prepare_shards('shapes:128:32', d, shard_size=8, image_size=32, progress=False)
    return d


@pytest.fixture(scope='module')
def base_run(shards, tmp_path_factory):
    "The reference: 1 process, global batch 8 = 2 accumulated micro-batches of 4, 10 steps."
    torch.set_num_threads(1)
    return launch(tiny_config(shards, tmp_path_factory.mktemp('runs')/'one', steps=10), quiet=True)


def _losses(r): return np.array([h['loss'] for h in r['history']])


def _model(ckpt): return {k: v for k, v in read_checkpoint(ckpt)[0].items() if k.startswith('model.')}


# ---- config ----------------------------------------------------------------------------------------------------
def test_config_roundtrip_overrides_and_release_defaults(tmp_path):
    rel = FullConfig()
    assert rel.model['byt5_embd'] == 2560 and rel.batch_size == 2048 and rel.lr == 1e-4 and rel.grad_clip == 1.0
    assert rel.warmup_steps == 10_000 and rel.dropout.byt5 == 0.05 and rel.dropout.clip_image == 0.9
    cfg = load_config(save_config(tiny_config('x', tmp_path), tmp_path/'c.yaml'), ['steps=3', 'data.lanes=4'])
    assert cfg.steps == 3 and cfg.data.lanes == 4 and cfg.model == TINY_MODEL
    assert load_config('tiny', ['steps=3']) == tiny_config(steps=3) and load_config('release') == FullConfig()
    with pytest.raises(ValueError, match='unknown key'): load_config({'stepz': 1})
    with pytest.raises(ValueError, match="'data' section"): load_config({'data': {'lane': 1}})
    with pytest.raises(ValueError, match='key=value'): load_config(None, ['steps'])
    with pytest.raises(FileNotFoundError, match='does not exist'): load_config(tmp_path/'missing.yaml')


def test_batch_arithmetic_errors():
    assert check_config(FullConfig(), 128) == 1 and check_config(FullConfig(), 8) == 16
    with pytest.raises(ValueError, match='not divisible by world_size × micro_batch'): check_config(FullConfig(micro_batch=24), 128)
    with pytest.raises(ValueError, match='multiple of data.lanes'): check_config(FullConfig(data=DataConfig(lanes=3000)), 1)
    with pytest.raises(ValueError, match='multiple of world_size'): check_config(FullConfig(micro_batch=2, data=DataConfig(lanes=512)), 1024)
    with pytest.raises(ValueError, match='num_workers'): check_config(FullConfig(data=DataConfig(num_workers=3)), 8)


def test_lr_schedule():
    c, r = FullConfig(), FullConfig(lr_schedule='release')
    assert lr_factor(c, 0) == pytest.approx(1e-4) and lr_factor(c, 9_999) == 1.0 and lr_factor(c, 1_000_000) == 1.0
    assert lr_factor(r, 500_000) == pytest.approx(0.1) and lr_factor(r, 705_000) == pytest.approx(0.55, abs=1e-3)
    assert lr_factor(r, 800_000) == 1.0


def test_config_files_in_repo():
    rel = load_config(ROOT/'configs'/'paella_v3.yaml')
    assert rel.to_dict() == FullConfig(data=DataConfig(shards=rel.data.shards), out_dir=rel.out_dir).to_dict()
    assert load_config(ROOT/'configs'/'tiny.yaml').model == TINY_MODEL


# ---- data in the trainer -------------------------------------------------------------------------------------------
def test_corrupt_and_truncated_shards_are_skipped_and_counted(shards, tmp_path):
    bad = tmp_path/'bad'; shutil.copytree(shards, bad)
    info = damage_shards(bad)
    r = launch(tiny_config(bad, tmp_path/'run', steps=20, ckpt_every=0, log_every=5, data=dict(num_workers=2)),
               quiet=True)                                                # > 1 epoch, lanes read by 2 worker processes
    assert r['step'] == 20
    sk = r['skipped']
    assert sk['corrupt'] >= 1 and sk['incomplete'] >= 1 and sk['truncated_shards'] >= 1, sk
    assert r['history'][-1]['skipped'] == sk                              # reported in the log / history too
    # everything before the break in the truncated shard was used
    kept = list(iter_tar_safe(bad/info['truncated']))
    assert 0 < len(kept) < 8


def iter_tar_safe(p):
    try: yield from iter_tar(p)
    except Exception: return


def test_trains_on_preencoded_shards(tmp_path):
    out = tmp_path/'pre'
    prepare_shards('shapes:24:32', out, shard_size=6, image_size=32, encode='toy', progress=False)
    assert launch(tiny_config(out, tmp_path/'run', steps=2, ckpt_every=0), quiet=True)['step'] == 2


# ---- distributed equivalence, resume -----------------------------------------------------------------------------
def test_two_processes_match_one(shards, base_run, tmp_path):
    r2 = launch(tiny_config(shards, tmp_path/'two', steps=10), nproc=2, quiet=True)
    l1, l2 = _losses(base_run), _losses(r2)
    assert len(l1) == len(l2) == 10
    np.testing.assert_allclose(l2, l1, rtol=1e-4, atol=1e-5)
    a, b = _model(base_run['checkpoint']), _model(r2['checkpoint'])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_fsdp_activation_checkpointing_stop_and_resume(shards, base_run, tmp_path):
    cfg = tiny_config(shards, tmp_path/'fsdp', steps=6, ckpt_every=3, parallel='fsdp', activation_checkpointing=True)
    launch(cfg, nproc=2, quiet=True)
    assert [s for s, p in list_checkpoints(cfg.out_dir)] == [3, 6] and list_checkpoints(cfg.out_dir)[-1][1].is_dir()
    r = launch(load_config(cfg, ['steps=10']), nproc=2, quiet=True)        # resumes from the DCP checkpoint at 6
    np.testing.assert_allclose(_losses(r), _losses(base_run), rtol=1e-4, atol=1e-5)


def test_kill_resume_bit_identical(shards, base_run, tmp_path):
    cfg = tiny_config(shards, tmp_path/'killed', steps=10)
    path = save_config(cfg, tmp_path/'killed.yaml')
    p = subprocess.run([sys.executable, '-c', f"from paella_nb.full_scale import launch, load_config; "
                        f"launch(load_config({str(path)!r}), crash_after=7, quiet=True)"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(cfg.out_dir)] == [5]             # 6, 7 were lost with the process
    r = launch(cfg, quiet=True)
    assert r['step'] == 10 and [h['step'] for h in r['history']] == list(range(1, 11))
    ta, ma = read_checkpoint(base_run['checkpoint']); tb, mb = read_checkpoint(r['checkpoint'])
    assert set(ta) == set(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta if not k.startswith('rng.')), 'weights / AdamW state differ'
    assert ma['extra']['lanes'] == mb['extra']['lanes']                     # the data position too


def test_resume_refuses_another_config(shards, base_run):
    out = Path(base_run['checkpoint']).parent.parent
    with pytest.raises(ValueError, match=r"model\.c_hidden: \[32, 64, 64\] \(checkpoint\) vs \[32, 64, 128\] \(now\)"):
        launch(tiny_config(shards, out, model={**TINY_MODEL, 'c_hidden': [32, 64, 128]}), quiet=True)
    with pytest.raises(ValueError, match=r'batch_size: 8 \(checkpoint\) vs 16 \(now\)'):
        launch(tiny_config(shards, out, batch_size=16), quiet=True)
    assert load_config(out/'config.yaml').batch_size == 8                  # its config.yaml was not overwritten


def test_stop_file_checkpoints_and_exits(shards, tmp_path):
    cfg = tiny_config(shards, tmp_path/'stop', steps=10, ckpt_every=0)
    (tmp_path/'stop').mkdir(); (tmp_path/'stop'/'STOP').touch()             # e.g. a SLURM job near its time limit
    r = launch(cfg, quiet=True)
    assert r['step'] == 1 and [s for s, _ in list_checkpoints(cfg.out_dir)] == [1]
    assert not (tmp_path/'stop'/'STOP').exists()
    assert launch(cfg, quiet=True)['step'] == 10                             # the next start continues


# ---- never lose the last good state ----------------------------------------------------------------------------------
def _poison(monkeypatch, after_calls: int, what: str):
    "Make chapter 06's training_step go bad from its call number `after_calls` on: a NaN loss, or NaN weights."
    real, calls = fs.training_step, [0]
    def step(model, tokens, inputs, cfg):
        loss, logits, mask = real(model, tokens, inputs, cfg); calls[0] += 1
        if calls[0] > after_calls:
            if what == 'loss': loss = loss * float('nan')
            else: logits.register_hook(lambda g: g * float('nan'))      # finite loss, NaN gradients → NaN weights
        return loss, logits, mask
    monkeypatch.setattr(fs, 'training_step', step)


@pytest.mark.parametrize('what', ['loss', 'weights'])
def test_divergence_stops_before_writing_and_names_the_last_good_checkpoint(shards, tmp_path, monkeypatch, what):
    # 2 micro-batches per step; the loss goes NaN from step 8, or the weights turn NaN in step 10's last micro-batch
    _poison(monkeypatch, 14 if what == 'loss' else 19, what)
    cfg = tiny_config(shards, tmp_path/what, steps=12, log_every=100)      # checkpoints at 5 and 10; no log line before 12
    with pytest.raises(FloatingPointError, match=r'step 10: .*step_00000010.* not written.*last good checkpoint is .*step_00000005') as e:
        launch(cfg, quiet=True)
    assert ('loss is not finite' if what == 'loss' else 'weights hold NaN') in str(e.value)
    assert [s for s, _ in list_checkpoints(cfg.out_dir)] == [5]
    w = _model(list_checkpoints(cfg.out_dir)[-1][1])                        # ... and it really is good
    assert all(torch.isfinite(v).all() for v in w.values())


def test_stale_temps_of_a_killed_save_are_removed_at_start(shards, tmp_path):
    ck = tmp_path/'run'/'checkpoints'; ck.mkdir(parents=True)
    stale = ck/f'{TEMP_PREFIX}new-999999-0123abcd-step_00000005.safetensors'
    stale.write_bytes(b'half a checkpoint'); (ck/'notes.tmp').write_text('not ours')
    launch(tiny_config(shards, tmp_path/'run', steps=1), quiet=True)
    assert not stale.exists() and (ck/'notes.tmp').exists()


# ---- process group errors ------------------------------------------------------------------------------------------
def test_init_errors_print_the_environment(monkeypatch):
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID', 'SLURM_NTASKS'):
        monkeypatch.delenv(k, raising=False)
    assert init_distributed().world_size == 1                              # no variables: run alone
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(RuntimeError, match='RANK is not set'): init_distributed()
    monkeypatch.setenv('RANK', '0')
    with pytest.raises(RuntimeError, match='MASTER_ADDR and MASTER_PORT not set'): init_distributed()
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1'); monkeypatch.setenv('MASTER_PORT', str(_free_port()))
    with pytest.raises(RuntimeError, match=r'(?s)could not start the gloo process group.*MASTER_PORT=\d+.*NCCL_SOCKET_IFNAME'):
        init_distributed(timeout_min=0.03)                                  # the peer never comes


# ---- the command line (paella_nb.cli calls these plain functions) ------------------------------------------------------
def test_cli_errors(tmp_path, capsys):
    from paella_nb.cli import main
    assert main(['train-full', 'tiny', f'data.shards={tmp_path}/none', f'out_dir={tmp_path}/o', '-q']) == 2
    assert '1 of 1 shards are missing' in capsys.readouterr().err
    assert main(['train-full', str(tmp_path/'missing.yaml')]) == 2
    assert main(['train-full', 'release', '--print-config']) == 0 and 'byt5_embd: 2560' in capsys.readouterr().out
    out = tmp_path/'pre'
    assert main(['prepare-shards', 'shapes:24:32', str(out), '--shard-size', '6', '--image-size', '32', '--encode', 'toy']) == 0
    assert json.loads((out/'shards.json').read_text())['encoded'] == ['tokens', 'clip', 'clip_image']
    assert main(['prepare-shards', 'shapes:4:32', str(out)]) == 2          # refuses to mix data sets


def test_module_entry_point_help():
    "`torchrun -m paella_nb.full_scale CONFIG` runs the module: its --help is train-full's."
    p = subprocess.run([sys.executable, '-m', 'paella_nb.full_scale', '--help'], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0 and 'torchrun' in p.stdout, p.stderr[-2000:]


# ---- model options ------------------------------------------------------------------------------------------------
def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = Paella(**{**TINY_MODEL, 'dropout': 0.0}); b = Paella(**{**TINY_MODEL, 'dropout': 0.0})
    b.load_state_dict(a.state_dict())
    assert apply_activation_checkpointing(b) == 14                        # 8 ResBlocks + 6 AttnBlocks
    x, r = torch.randint(0, 512, (2, 8, 8)), torch.rand(2)
    byt5, clip = torch.randn(2, 5, 32), torch.randn(2, 32)
    for m in (a, b): m(x, r, byt5, clip, clip).float().square().mean().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=n)
