"A run never loses its last good state: finiteness checked before every write, the newest N kept, stale temps removed."
import os
import time
from dataclasses import asdict

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pytest
import torch

from paella_nb.data import TEMP_PREFIX, atomic_write, is_temp_name
from paella_nb.training import (TokenData, TrainConfig, check_finite, checkpoint_path, latest_checkpoint,
                                list_checkpoints, load_checkpoint, prune_checkpoints, read_checkpoint, save_checkpoint,
                                train)
from paella_nb.unet import Paella, PAELLA_TINY

K = PAELLA_TINY.num_labels


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return Paella(**asdict(PAELLA_TINY))


def random_data(n=24, L=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TokenData(torch.randint(0, K, (n, 8, 8), generator=g),
                     cond={'byt5': torch.randn(n, L, PAELLA_TINY.byt5_embd, generator=g)},
                     uncond={'byt5': torch.randn(1, 1, PAELLA_TINY.byt5_embd, generator=g)})


def nan_after(k):
    "Forward hook: NaN logits from call k+1 on (a stand-in for a run that diverges after step k)."
    calls = [0]
    def hook(module, args, out):
        calls[0] += 1
        return out * float('nan') if calls[0] > k else out
    return hook


def finite(model): return all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize('log_every', [1, 100])      # caught at a log line, or only by the check before a write
def test_diverged_run_keeps_and_names_the_last_good_checkpoint(tmp_path, log_every):
    model = tiny_unet(); model.register_forward_hook(nan_after(7))
    cfg = TrainConfig.tiny(steps=12, batch_size=4, ckpt_every=3, keep_last=5, log_every=log_every)
    with pytest.raises(FloatingPointError) as e:
        train(model, random_data(), cfg, out_dir=tmp_path, progress=False)
    steps = [s for s, _ in list_checkpoints(tmp_path)]
    assert steps == [3, 6]                                   # step 9's write was refused (or never reached)
    good = latest_checkpoint(tmp_path)
    assert str(good) in str(e.value) and 'step 6' in str(e.value)
    m2 = tiny_unet(seed=5)
    meta = load_checkpoint(good, m2)                         # intact, loadable, finite
    assert meta['step'] == 6 and finite(m2)
    tensors, _ = read_checkpoint(good)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_nan_weights_are_never_written(tmp_path):
    model = tiny_unet()
    p1 = save_checkpoint(checkpoint_path(tmp_path, 1), model, step=1, loss=2.0)
    before = p1.read_bytes()
    with torch.no_grad(): next(model.parameters()).view(-1)[0] = float('inf')
    with pytest.raises(FloatingPointError, match='weights hold NaN or inf') as e:
        save_checkpoint(checkpoint_path(tmp_path, 2), model, step=2)
    assert 'was not written' in str(e.value) and str(p1) in str(e.value)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1] and p1.read_bytes() == before
    assert not any(is_temp_name(p) for p in (tmp_path / 'checkpoints').iterdir())
    with pytest.raises(FloatingPointError, match='the loss is nan'):
        check_finite(tiny_unet(), torch.tensor(float('nan')))
    with pytest.raises(FloatingPointError, match='No good checkpoint'):
        save_checkpoint(checkpoint_path(tmp_path / 'other', 1), tiny_unet(), step=1, loss=float('inf'))


def test_keep_last_n(tmp_path):
    r = train(tiny_unet(), random_data(), TrainConfig.tiny(steps=6, batch_size=4, ckpt_every=1, keep_last=2),
              out_dir=tmp_path, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 6] and r.checkpoint == latest_checkpoint(tmp_path)
    assert prune_checkpoints(tmp_path, 1) == [checkpoint_path(tmp_path, 5)]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6]


def test_stale_temps_removed_at_start(tmp_path):
    "A kill -9 mid-save leaves a full-size temp file; the next train() in that folder deletes it (ours only)."
    folder = tmp_path / 'checkpoints'; folder.mkdir()
    stale = folder / f'{TEMP_PREFIX}new-12345-0badcafe-step_00000004.safetensors'
    stale.write_bytes(b'\0' * 10_000)
    mine = folder / 'notes.txt'; mine.write_text('not ours to delete')
    old = time.time() - 7200; os.utime(stale, (old, old))
    assert is_temp_name(stale)
    train(tiny_unet(), random_data(), TrainConfig.tiny(steps=2, batch_size=4), out_dir=tmp_path, progress=False)
    assert not stale.exists() and mine.exists()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]


def test_resume_continues_from_latest(tmp_path):
    data = random_data()
    cfg = TrainConfig.tiny(steps=8, batch_size=4, ckpt_every=2, keep_last=2)
    a = tiny_unet(); train(a, data, cfg, out_dir=tmp_path / 'a', progress=False)
    b = tiny_unet(); train(b, data, cfg, out_dir=tmp_path / 'b', stop_after=5, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / 'b')] == [4, 5]
    c = tiny_unet(seed=3); r = train(c, data, cfg, out_dir=tmp_path / 'b', resume=True, progress=False)
    assert r.step == 8 and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
