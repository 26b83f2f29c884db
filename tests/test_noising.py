"Tests for paella_nb.noising: add_noise semantics, schedules, loss weight, bad input."
import math

import pytest
import torch

from paella_nb.noising import add_noise, get_loss_weight, sample_t, sampling_timesteps


def reference_add_noise(x, t, num_labels, mask=None, random_x=None):
    "The original Paella.add_noise, restated (same random-number use)."
    if mask is None:
        mask = (torch.rand_like(x.float()) <= t[:, None, None]).long()
    if random_x is None:
        random_x = torch.randint_like(x, 0, num_labels)
    return x * (1 - mask) + random_x * mask, mask


def test_same_as_original_semantics_and_rng_stream():
    x = torch.randint(0, 8192, (4, 16, 16))
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    torch.manual_seed(0); a = add_noise(x, t, 8192)
    torch.manual_seed(0); b = reference_add_noise(x, t, 8192)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].dtype == torch.long and a[0].dtype == torch.long
    assert (a[1][3] == 1).all()                        # t = 1: every token replaced
    assert torch.equal(a[0][0], x[0])                  # t = 0: nothing replaced


def test_mask_and_random_x():
    x = torch.randint(1, 100, (2, 8, 8))
    mask = torch.zeros_like(x); mask[:, :4] = 1
    rnd = torch.zeros_like(x)
    noised, m = add_noise(x, torch.tensor([0.5, 0.5]), 100, mask=mask.bool(), random_x=rnd)
    assert torch.equal(m, mask) and (noised[:, :4] == 0).all() and torch.equal(noised[:, 4:], x[:, 4:])
    noised, m = add_noise(x, 0.5, 100, random_x=rnd)       # float t is broadcast over the batch
    assert torch.equal(noised == 0, m == 1)


@pytest.mark.parametrize('K', [2, 64, 8192])
def test_fraction_changed(K):
    torch.manual_seed(0)
    x = torch.randint(0, K, (16, 64, 64))
    n = x.numel()
    for t in [0.1, 0.5, 0.9]:
        frac = (add_noise(x, t, K)[0] != x).float().mean().item()
        p = t * (1 - 1 / K)
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_other_shapes():
    x = torch.randint(0, 10, (3, 5))                     # [B, N] sequences work too
    noised, mask = add_noise(x, torch.ones(3), 10, random_x=torch.zeros_like(x))
    assert (noised == 0).all() and mask.shape == x.shape


def test_loss_weight():
    t = torch.tensor([0.0, 0.5, 1.0])
    mask = torch.tensor([0, 1]).repeat(3, 4, 1)          # [3, 4, 2]
    w = get_loss_weight(t, mask)
    assert torch.allclose(w[:, :, 0], torch.tensor([0.3, 0.65, 1.0])[:, None].expand(3, 4))
    assert (w[:, :, 1] == 1).all()
    assert torch.allclose(get_loss_weight(t, mask, min_val=0.0)[0, 0, 0], torch.tensor(0.0))
    ref = 1 - (1 - mask) * ((1 - t) * (1 - 0.3))[:, None, None]   # the original formula
    assert torch.equal(w, ref)


def test_schedules():
    t = sample_t(10_000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (10_000,) and t.min() >= 0.001 and t.max() <= 1.0
    assert abs(t.mean().item() - 0.5005) < 0.01
    ts = sampling_timesteps(12)
    assert ts.shape == (13,) and ts[0] == 1 and ts[-1] == 0
    assert torch.allclose(ts, torch.linspace(1, 0, 13))
    assert torch.allclose(sampling_timesteps(4, t_start=0.5), torch.linspace(0.5, 0, 5))
    with pytest.raises(ValueError): sampling_timesteps(0)
    with pytest.raises(ValueError): sampling_timesteps(4, t_start=0.2, t_end=0.5)


@pytest.mark.parametrize('call, exc, pattern', [
    (lambda x: add_noise(x.float(), 0.5, 64), TypeError, 'int64'),
    (lambda x: add_noise(x.int(), 0.5, 64), TypeError, 'int64'),
    (lambda x: add_noise(x, 1.5, 64), ValueError, r'\[0, 1\]'),
    (lambda x: add_noise(x, torch.tensor([-0.1, 0.5]), 64), ValueError, r'\[0, 1\]'),
    (lambda x: add_noise(x, torch.rand(3), 64), ValueError, r'shape \[2\]'),
    (lambda x: add_noise(x, torch.tensor([1, 0]), 64), TypeError, 'float'),
    (lambda x: add_noise(x + 64, 0.5, 64), ValueError, r'\[0, 64\)'),
    (lambda x: add_noise(x - 1, 0.5, 64), ValueError, r'\[0, 64\)'),
    (lambda x: add_noise(x[0, 0], 0.5, 64), ValueError, 'batch'),
    (lambda x: add_noise(x, 0.5, 64, mask=torch.ones(2, 4, 4)), ValueError, 'mask'),
    (lambda x: add_noise(x, 0.5, 64, random_x=x[:1]), ValueError, 'random_x'),
    (lambda x: add_noise(x, 0.5, 64, random_x=x.float()), ValueError, 'random_x'),
    (lambda x: add_noise(x, float('nan'), 64), ValueError, 'NaN'),                 # would silently add no noise
    (lambda x: add_noise(x, torch.tensor([0.5, float('nan')]), 64), ValueError, r'NaN at batch positions \[1\]'),
])
def test_bad_input(call, exc, pattern):
    x = torch.randint(0, 64, (2, 8, 8))
    with pytest.raises(exc, match=pattern):
        call(x)
