"Training: loss, overfitting, exact resume, checkpoint safety and bad input (all on CPU, tiny U-Net)."
import math
import os
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pytest
import torch

from paella_nb.conditioning import CFGDropout, Conditioner, ByT5Encoder
from paella_nb.noising import add_noise
from paella_nb.data import atomic_write
from paella_nb.training import (TokenData, TrainConfig, batch_indices, check_resume, latest_checkpoint, load_checkpoint,
                                paella_accuracy, paella_loss, read_checkpoint, save_checkpoint, train, training_step, unwrap)
from paella_nb.unet import Paella, PAELLA_TINY

K = PAELLA_TINY.num_labels


@pytest.fixture(autouse=True)
def one_thread():
    "The tiny model is overhead-bound: one thread is as fast, and much steadier on a shared CPU."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    return Paella(**{**asdict(PAELLA_TINY), **kw})


def random_data(n=48, L=6, seed=1, grid=8):
    g = torch.Generator().manual_seed(seed)
    return TokenData(torch.randint(0, K, (n, grid, grid), generator=g),
                     cond={'byt5': torch.randn(n, L, PAELLA_TINY.byt5_embd, generator=g)},
                     uncond={'byt5': torch.randn(1, 1, PAELLA_TINY.byt5_embd, generator=g)})


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- loss ---------------------------------------------------------------------------------------------------------
def test_loss_uniform_logits_is_log_k_and_weights():
    tgt = torch.randint(0, K, (3, 8, 8)); t = torch.rand(3); _, mask = add_noise(tgt, t, K)
    assert math.isclose(paella_loss(torch.zeros(3, K, 8, 8), tgt, t, mask).item(), math.log(K), rel_tol=1e-5)
    # hand-computed weighted mean for one image
    logits = torch.randn(1, K, 8, 8); t1 = torch.tensor([0.25]); m1 = (torch.rand(1, 8, 8) < 0.25).long()
    ce = torch.nn.functional.cross_entropy(logits, tgt[:1], reduction='none')
    w = torch.where(m1.bool(), 1.0, 1 - 0.75 * 0.7)
    ref = (ce * w).sum() / w.sum()
    assert torch.allclose(paella_loss(logits, tgt[:1], t1, m1, label_smoothing=0.0), ref, atol=1e-6)


def test_accuracy_counts_replaced_tokens_only():
    tgt = torch.zeros(1, 2, 2, dtype=torch.long)
    mask = torch.tensor([[[1, 0], [0, 0]]])
    logits = torch.zeros(1, 4, 2, 2); logits[:, 0] = 1; logits[0, 1, 0, 0] = 2   # wrong only at the replaced token
    acc = paella_accuracy(logits, tgt, mask)
    assert acc['acc_noised'].item() == 0.0 and acc['acc_all'].item() == 0.75


@pytest.mark.parametrize('bad, msg', [
    (dict(target=torch.zeros(2, 4, 4, dtype=torch.long)), 'target must be'),
    (dict(t=torch.rand(3)), 't must be a [B]'),
    (dict(mask=torch.zeros(2, 8)), 'mask must be'),
    (dict(logits=torch.zeros(2, K, 8)), 'logits must be'),
    (dict(target=torch.full((2, 8, 8), K)), 'target ids must lie in'),
])
def test_loss_bad_input(bad, msg):
    args = dict(logits=torch.zeros(2, K, 8, 8), target=torch.zeros(2, 8, 8, dtype=torch.long), t=torch.rand(2),
                mask=torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=msg.replace('[', r'\[')):
        paella_loss(**{**args, **bad})


# ---- overfitting ----------------------------------------------------------------------------------------------------
def test_overfits_one_batch():
    "The tiny U-Net drives paella_loss (label smoothing 0.1 included) on one fixed batch down >= 5x in 200 CPU steps."
    model = tiny_unet()
    data = random_data(n=4)
    t = torch.linspace(0.1, 0.9, 4)
    torch.manual_seed(123)
    noised, mask = add_noise(data.tokens, t, K)                   # a fixed evaluation batch: same t, same noise

    def loss_now():
        model.eval()
        with torch.no_grad(): l = paella_loss(model(noised, t, byt5=data.cond['byt5']), data.tokens, t, mask).item()
        model.train(); return l

    before = loss_now()
    cfg = TrainConfig(steps=200, batch_size=4, lr=3e-3, warmup_steps=10, log_every=50, ckpt_every=0,
                      dropout=CFGDropout(0, 0, 0), device='cpu')
    train(model, data, cfg, progress=False)
    after = loss_now()
    print(f"overfit: {before:.3f} -> {after:.3f} ({before / after:.1f}x; floor with smoothing 0.1 = 0.947)")
    assert before / after >= 5, (before, after)


# ---- exact resume -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('per_sample', [False, True])
def test_resume_is_bit_exact(tmp_path, per_sample):
    "N straight steps == N/2 steps, stop, resume N/2 (model dropout, CFG dropout, EMA, data order all in play)."
    data = random_data(n=40)
    cfg = TrainConfig.tiny(steps=16, batch_size=8, ema_decay=0.9, ckpt_every=3,
                           dropout=CFGDropout(0.3, 0.9, 0.9, per_sample=per_sample))
    a = tiny_unet(); ra = train(a, data, cfg, out_dir=tmp_path / 'a', progress=False)
    b = tiny_unet(); train(b, data, cfg, out_dir=tmp_path / 'b', stop_after=8, progress=False)
    assert read_checkpoint(latest_checkpoint(tmp_path / 'b'))[1]['step'] == 8
    c = tiny_unet(seed=99)                                         # a different init: everything comes from the file
    rc = train(c, data, cfg, out_dir=tmp_path / 'b', resume=True, progress=False)
    assert rc.step == ra.step == 16
    assert same_weights(a, c) and same_weights(ra.ema, rc.ema)
    assert not same_weights(a, tiny_unet())                       # it did train


def test_resume_after_a_crash(tmp_path):
    "A run that dies (an exception) between checkpoints resumes from the last one and still ends identical."
    data = random_data(n=40)
    cfg = TrainConfig.tiny(steps=12, batch_size=8, ckpt_every=4, sample_every=1)

    def crash_at_10(model, step):
        if step == 10: raise KeyboardInterrupt('power cut')
        return torch.rand(2, 3, 8, 8)                              # sampling must not disturb training randomness

    a = tiny_unet(); train(a, data, cfg, out_dir=tmp_path / 'a', progress=False, sample_fn=lambda m, s: torch.rand(2, 3, 8, 8))
    b = tiny_unet()
    with pytest.raises(KeyboardInterrupt):
        train(b, data, cfg, out_dir=tmp_path / 'b', progress=False, sample_fn=crash_at_10)
    assert read_checkpoint(latest_checkpoint(tmp_path / 'b'))[1]['step'] == 8
    c = tiny_unet()
    train(c, data, cfg, out_dir=tmp_path / 'b', resume=True, progress=False, sample_fn=lambda m, s: torch.rand(2, 3, 8, 8))
    assert same_weights(a, c)
    assert len(list((tmp_path / 'a' / 'samples').glob('*.png'))) == 12


def test_captions_with_conditioner_resume(tmp_path):
    enc = ByT5Encoder.tiny(d_model=PAELLA_TINY.byt5_embd)
    cond = Conditioner(enc, cache=True)
    caps = [f"a {c} thing number {i}" for i, c in enumerate(['red', 'blue', 'green'] * 8)]
    data = TokenData(torch.randint(0, K, (24, 8, 8)), captions=caps)
    cfg = TrainConfig.tiny(steps=8, batch_size=6, dropout=CFGDropout(0.5, 0.5, 0.5))
    a = tiny_unet(); train(a, data, cfg, cond, out_dir=tmp_path / 'a', progress=False)
    b = tiny_unet(); train(b, data, cfg, cond, out_dir=tmp_path / 'b', stop_after=3, progress=False)
    train(b, data, cfg, cond, out_dir=tmp_path / 'b', resume=True, progress=False)
    assert same_weights(a, b)


# ---- checkpoint safety --------------------------------------------------------------------------------------------
def test_checkpoint_roundtrip_and_kill_mid_save(tmp_path, monkeypatch):
    model = tiny_unet(); opt = torch.optim.AdamW(model.parameters(), 1e-3)
    path = tmp_path / 'ckpt.safetensors'
    save_checkpoint(path, model, opt, step=3, extra={'hello': [1, 2]})
    good = path.read_bytes()
    import safetensors.torch

    def dies(tensors, filename, metadata=None):
        Path(filename).write_bytes(b'\0' * 100)
        raise KeyboardInterrupt('killed while writing')
    monkeypatch.setattr(safetensors.torch, 'save_file', dies)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_unet(1), opt, step=4)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ['ckpt.safetensors']
    monkeypatch.undo()
    m2 = tiny_unet(5); o2 = torch.optim.AdamW(m2.parameters(), 1e-3)
    meta = load_checkpoint(path, m2, o2)
    assert same_weights(model, m2) and meta['step'] == 3 and meta['extra'] == {'hello': [1, 2]}


def test_truncated_and_foreign_files(tmp_path):
    model = tiny_unet()
    path = save_checkpoint(tmp_path / 'c.safetensors', model, step=1)
    cut = tmp_path / 'cut.safetensors'; cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match='truncated or corrupt'): load_checkpoint(cut, model)
    with pytest.raises(ValueError, match='another model'): load_checkpoint(path, tiny_unet(c_hidden=[32, 64, 96]))
    with pytest.raises(FileNotFoundError): load_checkpoint(tmp_path / 'nope.safetensors', model)
    import safetensors.torch
    safetensors.torch.save_file({'w': torch.zeros(2)}, str(tmp_path / 'plain.safetensors'))
    with pytest.raises(ValueError, match='not a paella_nb training checkpoint'):
        load_checkpoint(tmp_path / 'plain.safetensors', model)


def test_atomic_write_cleans_up(tmp_path):
    p = tmp_path / 'x.bin'
    atomic_write(p, lambda tmp: Path(tmp).write_bytes(b'one'))
    with pytest.raises(RuntimeError):
        atomic_write(p, lambda tmp: (Path(tmp).write_bytes(b'tw'), (_ for _ in ()).throw(RuntimeError('boom'))))
    assert p.read_bytes() == b'one' and len(list(tmp_path.iterdir())) == 1


def test_resume_refusals(tmp_path):
    data = random_data(n=16)
    cfg = TrainConfig.tiny(steps=4, batch_size=4)
    train(tiny_unet(), data, cfg, out_dir=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match='resume=True'):
        train(tiny_unet(), data, cfg, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match='another TrainConfig'):
        train(tiny_unet(), data, TrainConfig.tiny(steps=4, batch_size=4, lr=1e-2), out_dir=tmp_path, resume=True,
              progress=False)
    with pytest.raises(ValueError, match='another model'):
        train(tiny_unet(c_hidden=[32, 64, 96]), data, cfg, out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match='needs out_dir'):
        train(tiny_unet(), data, cfg, resume=True, progress=False)
    r = train(tiny_unet(), data, TrainConfig.tiny(steps=6, batch_size=4, log_every=1), out_dir=tmp_path,
              resume=True, progress=False)                        # more steps (and another log_every) is allowed
    assert r.step == 6


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_bad_data_and_config():
    toks = torch.randint(0, K, (4, 8, 8))
    with pytest.raises(TypeError): TokenData(toks.float(), captions=['a'] * 4)
    with pytest.raises(ValueError, match='either captions'): TokenData(toks)
    with pytest.raises(ValueError, match='4 strings'): TokenData(toks, captions=['a'] * 3)
    with pytest.raises(ValueError, match='uncond'): TokenData(toks, cond={'byt5': torch.zeros(4, 2, 40)})
    with pytest.raises(ValueError, match='steps'): TrainConfig(steps=0)
    with pytest.raises(ValueError, match='precision'): TrainConfig(precision='fp8')
    with pytest.raises(ValueError, match='ema_decay'): TrainConfig(ema_decay=1.0)
    for bad in [dict(grad_clip=float('nan')), dict(label_smoothing=5), dict(lr=float('inf')), dict(lr=0), dict(steps=True),
                dict(betas=(0.9, float('nan'))), dict(min_val=-0.1), dict(weight_decay=float('nan')), dict(seed=-1),
                dict(keep_last=0), dict(batch_size=2.5), dict(device='nonsense')]:
        with pytest.raises(ValueError, match=f"TrainConfig.{next(iter(bad))} must be"): TrainConfig(**bad)
    with pytest.raises(ValueError, match='conditioner'): train(tiny_unet(), TokenData(toks, captions=['a'] * 4))
    big = TokenData(toks + K, cond={'byt5': torch.zeros(4, 2, 40)}, uncond={'byt5': torch.zeros(1, 1, 40)})
    with pytest.raises(ValueError, match='num_labels'): train(tiny_unet(), big, TrainConfig.tiny(), progress=False)


def test_batch_indices_epochs():
    n, bs = 10, 3
    ep = torch.cat([batch_indices(s, n, bs, seed=4) for s in range(3)])
    assert len(set(ep.tolist())) == 9
    assert len(batch_indices(0, 2, 5)) == 5                        # fewer images than a batch: repeat


def test_training_step_and_unwrap():
    "The one step: (loss, logits, mask); unwrap finds the model in DDP-like (.module) and compiled (._orig_mod) wrappers."
    model = tiny_unet(); data = random_data(n=4)
    torch.manual_seed(0)
    loss, logits, mask = training_step(model, data.tokens, {'byt5': data.cond['byt5']}, TrainConfig.tiny())
    assert loss.dim() == 0 and logits.shape == (4, K, 8, 8) and mask.shape == (4, 8, 8) and mask.dtype == torch.long
    wrapped = torch.nn.Module(); wrapped.module = torch.nn.Module(); wrapped.module._orig_mod = model
    assert unwrap(wrapped) is model and unwrap(model) is model


def test_check_resume_declares_free_fields_once():
    saved = TrainConfig.tiny().to_dict()
    assert check_resume(saved, TrainConfig.tiny(steps=99, keep_last=5), 'ck') == ['keep_last', 'steps']
    with pytest.raises(ValueError, match='dropout.byt5'):
        check_resume(saved, TrainConfig.tiny(dropout=CFGDropout(0.5, 0.9, 0.9)), 'ck')
    with pytest.raises(ValueError, match='no training config'): check_resume(None, TrainConfig.tiny(), 'ck')

    class Sub(TrainConfig):                                           # a subclass (like FullConfig) extends the list
        RESUME_FREE = TrainConfig.RESUME_FREE + ('lr',)
    assert check_resume(saved, Sub(**{**TrainConfig.tiny().__dict__, 'lr': 1.0}), 'ck') == ['lr']
