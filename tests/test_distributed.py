"""Chapter 10 (paella_nb.distributed): the full-scale trainer on a 2-core CPU with the gloo backend.

What is checked (tiny config, shards built from the shapes data):
- 2 processes (DDP, gloo) follow the 1-process run at the same global batch: losses within 1e-4 relative,
  final weights within 1e-6 (measured: identical);
- 2 processes with FSDP2 + activation checkpointing, stopped and resumed from a torch.distributed.checkpoint: same
  losses as the 1-process DDP run;
- kill -9 after step 7 of 10, resume: weights and AdamW state bit-identical to the uninterrupted run;
- a corrupt JPEG, a sample without caption and a truncated tar are skipped and counted, the run goes on;
- bad input: clear errors.
"""
import importlib.util, json, os, shutil, signal, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from paella_nb.distributed import (FullConfig, DataConfig, tiny_config, load_config, save_config, config_dict,
                                   check_config, lr_factor, prepare_shards, prepare_shards_cli, resolve_shards,
                                   damage_shards, RankStream, launch, list_checkpoints, train_full_cli, init_distributed,
                                   apply_activation_checkpointing, model_flops, activation_memory, cost_table,
                                   implied_mfu, TINY_MODEL, _free_port, iter_tar)
from paella_nb.unet import Paella, PAELLA_V3
from paella_nb.training import read_checkpoint

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
    assert rel.model['byt5_embd'] == 2560 and rel.global_batch == 2048 and rel.lr == 1e-4 and rel.grad_clip == 1.0
    assert rel.warmup_steps == 10_000 and rel.dropout.byt5 == 0.05 and rel.dropout.clip_image == 0.9
    cfg = load_config(save_config(tiny_config('x', tmp_path), tmp_path/'c.yaml'), ['steps=3', 'data.lanes=4'])
    assert cfg.steps == 3 and cfg.data.lanes == 4 and cfg.model == TINY_MODEL
    with pytest.raises(ValueError, match='unknown key'): load_config({'stepz': 1})
    with pytest.raises(ValueError, match="'data' section"): load_config({'data': {'lane': 1}})
    with pytest.raises(ValueError, match='key=value'): load_config(None, ['steps'])


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


# ---- data --------------------------------------------------------------------------------------------------------
def test_data_order_independent_of_world_size(shards):
    paths, man = resolve_shards(shards)
    assert len(paths) == 16 and man['samples'] == 128
    cfg = tiny_config(shards)
    one, two = RankStream(paths, cfg, 0, 1), [RankStream(paths, cfg, r, 2) for r in range(2)]
    for _ in range(20):                                                   # 160 samples: crosses an epoch
        a, b = one.next(), [s.next() for s in two]
        assert a['captions'] == b[0]['captions'] + b[1]['captions']
        assert torch.equal(a['image'], torch.cat([b[0]['image'], b[1]['image']]))
    assert {l: s['epoch'] for l, s in one.states.items()} == {0: 1, 1: 1}


def test_dataloader_workers_and_restart_position(shards):
    "Lanes read by 2 DataLoader worker processes give the same batches; a stream restarted from saved lane states continues."
    paths, _ = resolve_shards(shards)
    cfg = tiny_config(shards, data=dict(lanes=4, num_workers=2))
    ref, par = RankStream(paths, tiny_config(shards, data=dict(lanes=4)), 0, 1), RankStream(paths, cfg, 0, 1)
    for _ in range(5):
        a, b = ref.next(), par.next()
        assert a['captions'] == b['captions'] and torch.equal(a['image'], b['image'])
    saved = json.loads(json.dumps(par.states)); par.close()
    again = RankStream(paths, cfg, 0, 1, states=saved)
    for _ in range(3): assert again.next()['captions'] == ref.next()['captions']
    again.close(); ref.close()


def test_brace_patterns_and_missing_shards(shards, tmp_path):
    paths, _ = resolve_shards(str(shards/'shard-{000000..000003}.tar'))
    assert len(paths) == 4
    with pytest.raises(FileNotFoundError, match='2 of 6 shards are missing'):
        resolve_shards(str(shards/'shard-{000012..000017}.tar'))
    with pytest.raises(FileNotFoundError, match='data.shards is empty'): resolve_shards('')
    with pytest.raises(FileNotFoundError, match='no .tar shards'): resolve_shards(tmp_path)


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


def test_prepare_shards_preencoded_and_cli(tmp_path):
    out = tmp_path/'pre'
    assert prepare_shards_cli(['shapes:24:32', str(out), '--shard-size', '6', '--image-size', '32', '--encode', 'toy']) == 0
    man = json.loads((out/'shards.json').read_text())
    assert man['encoded'] == ['tokens', 'clip', 'clip_image'] and (out/'null_cond.safetensors').exists()
    cfg = tiny_config(out, tmp_path/'run', steps=2, ckpt_every=0)
    b = RankStream(resolve_shards(out)[0], cfg, 0, 1, preencoded=tuple(man['encoded'])).next()
    assert b['tokens'].shape == (8, 8, 8) and b['clip'].shape == (8, 32) and 'image' not in b
    assert launch(cfg, quiet=True)['step'] == 2
    assert prepare_shards_cli(['shapes:4:32', str(out)]) == 2                # refuses to mix data sets


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
    p = subprocess.run([sys.executable, '-m', 'paella_nb.train_full', str(path), '--crash-after', '7', '-q'],
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
    with pytest.raises(ValueError, match=r"model differs in \['c_hidden'\]"):
        launch(tiny_config(shards, out, model={**TINY_MODEL, 'c_hidden': [32, 64, 128]}), quiet=True)
    with pytest.raises(ValueError, match='global_batch: 8 in the checkpoint vs 16 now'):
        launch(tiny_config(shards, out, global_batch=16), quiet=True)
    assert load_config(out/'config.yaml').global_batch == 8                # its config.yaml was not overwritten


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


def test_cli_errors(tmp_path, capsys):
    assert train_full_cli(['tiny', f'data.shards={tmp_path}/none', f'out_dir={tmp_path}/o', '-q']) == 2
    assert '1 of 1 shards are missing' in capsys.readouterr().err
    assert train_full_cli([str(tmp_path/'missing.yaml')]) == 2
    assert train_full_cli(['release', '--print-config']) == 0 and 'byt5_embd: 2560' in capsys.readouterr().out


# ---- model options and cost model ------------------------------------------------------------------------------------
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


def test_cost_model():
    mf = model_flops(None, 64, 128)
    assert mf['params'] == 1_008_350_592
    assert 500e9 < mf['forward'] < 560e9                                 # 531 GFLOP per 256 px image at L = 128
    am = activation_memory(None, 64, 128)
    assert am['checkpointed'] < am['full'] / 5 and 2 * 2**30 < am['full'] < 4 * 2**30
    rows = cost_table(3 * mf['forward'], mfus=(0.4,))
    assert rows[0]['gpu_days'] == pytest.approx(rows[0]['days'] * 128)
    assert 0.03 < implied_mfu(3 * mf['forward'], 2048, 1_300_000, 128, 21) < 0.1


def test_bench_script_smoke():
    spec = importlib.util.spec_from_file_location('full_scale_gpu', ROOT/'bench'/'full_scale_gpu.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    res = mod.main(['--smoke', '--mode', 'plain', '--micro', '2'])
    assert res[0]['micro_batch'] == 2 and res[0]['step_s'] > 0


def test_stop_file_checkpoints_and_exits(shards, tmp_path):
    cfg = tiny_config(shards, tmp_path/'stop', steps=10, ckpt_every=0)
    (tmp_path/'stop').mkdir(); (tmp_path/'stop'/'STOP').touch()             # e.g. a SLURM job near its time limit
    r = launch(cfg, quiet=True)
    assert r['step'] == 1 and [s for s, _ in list_checkpoints(cfg.out_dir)] == [1]
    assert not (tmp_path/'stop'/'STOP').exists()
    assert launch(cfg, quiet=True)['step'] == 10                             # the next start continues


def test_config_files_in_repo():
    rel = load_config(ROOT/'configs'/'paella_v3.yaml')
    assert config_dict(rel) == config_dict(FullConfig(data=DataConfig(shards=rel.data.shards), out_dir=rel.out_dir))
    assert load_config(ROOT/'configs'/'tiny.yaml').model == TINY_MODEL
