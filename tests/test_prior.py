"Tests for the Paella v3 prior (paella_nb.editing): the released layout, sampling, training, saving, the shipped small prior."
import json, math
from dataclasses import asdict
import pytest
import torch

from paella_nb.editing import (PriorConfig, PRIOR_V1, PRIOR_SMALL, TINY_PRIOR_TRAIN, PriorModel, prior_step,
                               sample_prior, train_prior, save_small_prior, load_small_prior, small_prior,
                               small_prior_info, measure_prior)
from paella_nb.data import data_path

TINY = PriorConfig(clip_r=16, c_hidden=32, c_r=8, num_blocks=2)


def _tiny_data(n=256, seed=0):
    "Image embeddings that depend on the text embeddings, for TINY (clip_r=16)."
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, TINY.clip_r, generator=g)
    return dict(text=text, image=text.flip(1) + 0.1 * torch.randn(n, TINY.clip_r, generator=g))


@pytest.fixture(scope='module')
def tiny():
    return train_prior(TINY, TINY_PRIOR_TRAIN, _tiny_data())


def test_v1_layout_strict_loads_on_meta():
    rows = [line.split('\t') for line in data_path('prior_v1_keys.txt').read_text().splitlines() if line.strip()]
    sd = {k: torch.empty(json.loads(shape), device='meta') for k, shape in rows}   # no memory, no download
    with torch.device('meta'):
        model = PriorModel(**asdict(PRIOR_V1))
    assert len(sd) == 292
    model.load_state_dict(sd, strict=True, assign=True)              # raises on any missing/extra key or shape
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - 899.8) < 0.05, n


def test_tiny_prior_trains(tiny):
    model, hist = tiny
    loss = hist['loss']
    assert len(loss) == TINY_PRIOR_TRAIN.steps and all(math.isfinite(v) for v in loss)
    assert sum(loss[-10:]) / 10 < 0.8 * sum(loss[:10]) / 10, (loss[:10], loss[-10:])
    assert not model.training and hist['cpu_seconds'] > 0
    again, _ = train_prior(TINY, TINY_PRIOR_TRAIN, _tiny_data())      # seeded: the same run twice
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny):
    model, c = tiny[0], _tiny_data(4, seed=1)['text']
    state = torch.get_rng_state()
    a = sample_prior(model, c, steps=8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (4, 16) and torch.isfinite(a).all()
    assert torch.equal(a, sample_prior(model, c, steps=8, seed=3))
    assert not torch.equal(a, sample_prior(model, c, steps=8, seed=4))


def test_cfg_one_is_the_conditional_model(tiny):
    "cfg=1 must be the plain conditional DDPM chain: the release's levels linspace(1, 0, T+2)[1:], text never zeroed."
    model, c, steps = tiny[0], _tiny_data(4, seed=1)['text'], 8
    g = torch.Generator().manual_seed(0)
    ts = torch.linspace(1, 0, steps + 2)[1:]
    x = torch.randn(c.shape, generator=g)
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = prior_step(x, model(x, t.expand(4), c), t.expand(4), t_next.expand(4), 'ddpm', g)
    assert torch.allclose(sample_prior(model, c, steps=steps, cfg=1.0, seed=0), x, atol=1e-6)
    assert not torch.allclose(sample_prior(model, c, steps=steps, cfg=3.0, seed=0), x, atol=1e-3)


def test_save_load_round_trip(tiny, tmp_path):
    model = tiny[0]
    path = save_small_prior(model, tmp_path / 'p.safetensors', metadata=dict(note='tiny', steps=60))
    again = load_small_prior(path)
    assert again.config == asdict(TINY) and small_prior_info(path) == dict(note='tiny', steps=60)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    c = _tiny_data(2, seed=1)['text']
    assert torch.equal(sample_prior(model, c, steps=4, seed=0), sample_prior(again, c, steps=4, seed=0))


def test_bad_files_are_explained(tiny, tmp_path):
    from safetensors.torch import save_file
    with pytest.raises(FileNotFoundError, match='save_small_prior'):
        load_small_prior(tmp_path / 'missing.safetensors')
    (tmp_path / 'p.pt').write_bytes(b'')
    with pytest.raises(ValueError, match='safetensors'):
        load_small_prior(tmp_path / 'p.pt')
    (tmp_path / 'cut.safetensors').write_bytes(b'\x00' * 10)
    with pytest.raises(ValueError, match='truncated'):
        load_small_prior(tmp_path / 'cut.safetensors')
    save_file({'in_mapper.0.weight': torch.zeros(2, 2)}, str(tmp_path / 'unet.safetensors'))
    with pytest.raises(ValueError, match='holds no prior'):
        load_small_prior(tmp_path / 'unet.safetensors')
    sd = dict(tiny[0].state_dict()); sd.pop('blocks.2.4.bias')
    save_file(sd, str(tmp_path / 'short.safetensors'))
    with pytest.raises(ValueError, match='blocks.2.4.bias'):
        load_small_prior(tmp_path / 'short.safetensors')


def test_bad_inputs_are_explained(tiny):
    model, c = tiny[0], torch.randn(2, 16)
    with pytest.raises(ValueError, match=r'\[B, 16\]'):
        sample_prior(model, torch.randn(2, 64), seed=0)
    with pytest.raises(ValueError, match=r'\[B, 16\]'):
        sample_prior(model, torch.randn(16), seed=0)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match='steps'):
            sample_prior(model, c, steps=steps, seed=0)
    for cfg in (float('inf'), float('nan')):
        with pytest.raises(ValueError, match='cfg'):
            sample_prior(model, c, cfg=cfg, seed=0)
    with pytest.raises(ValueError, match=r'\[N, 16\]'):
        train_prior(TINY, TINY_PRIOR_TRAIN, dict(text=torch.randn(8, 16), image=torch.randn(8, 64)))
    with pytest.raises(ValueError, match='non-finite'):
        train_prior(TINY, TINY_PRIOR_TRAIN, dict(text=torch.full((8, 16), float('nan')), image=torch.randn(8, 16)))


def test_shipped_prior_beats_the_text_embedding():
    path = data_path('small_prior.safetensors')
    assert path.stat().st_size < 2e6, "keep the shipped prior under 2 MB"
    model = small_prior()
    assert model.config == asdict(PRIOR_SMALL) and small_prior() is model   # 64-d: the small CLIP's width; cached
    info = small_prior_info()
    assert info['train_cpu_seconds'] > 0 and set(info['eval']) == {'test', 'test_compositional'}
    for split in ('test', 'test_compositional'):
        r = measure_prior(model, split, n=100, seeds=(0,))
        assert r['cos_prior'] > r['cos_text'] + 0.005, r              # the prior lands nearer the real image
