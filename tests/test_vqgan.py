"Tests of paella_nb.vqgan: checkpoint compatibility, bad input, save/load, quantiser fixes, the shipped tokenizer."
import json, math, os, pickle
from pathlib import Path

import pytest
import torch

from paella_nb.vqgan import (VQModel, VectorQuantizer, load_weights, save_weights, check_state_dict, load_vqgan, save_vqgan, read_state_dict,
                             config_from_state_dict, train_vqgan, code_usage, psnr, small_vqgan, SMALL_VQGAN_CONFIG,
                             patch_kmeans, kmeans_reconstruct, patchify, unpatchify)

DATA = Path(__file__).resolve().parents[1] / 'data'
TINY = dict(levels=2, bottleneck_blocks=2, c_hidden=32, c_latent=4, codebook_size=64)


def key_list(name):
    rows = (l.split('\t') for l in (DATA / name).read_text().splitlines() if l.strip())
    return {k: tuple(json.loads(s)) for k, s in rows}


def meta_state_dict(keys):
    return {k: torch.empty(s, dtype=torch.long if k.endswith('num_batches_tracked') else torch.float32, device='meta')
            for k, s in keys.items()}


# ------------------------------------------------------------------ checkpoint compatibility
def test_released_checkpoint_strict_loads_on_meta():
    keys = key_list('vqgan_f4_keys.txt')
    with torch.device('meta'): m = VQModel()
    res = m.load_state_dict(meta_state_dict(keys), strict=True, assign=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == keys and len(keys) == 122
    assert sum(p.numel() for p in m.parameters()) == 18_406_894          # "18.4M"
    assert m.codebook_size == 8192 and m.vquantizer.codebook.weight.shape == (8192, 4)


def test_released_checkpoint_through_load_weights_and_inferred_config():
    keys = key_list('vqgan_f4_keys.txt')
    sd = meta_state_dict(keys)
    assert config_from_state_dict(sd) == dict(levels=2, bottleneck_blocks=12, c_hidden=384, c_latent=4,
                                              codebook_size=8192, scale_factor=0.3764)
    with torch.device('meta'): m = VQModel()
    load_weights(m, sd)                                                       # meta model: assigned, no copy


def test_tiny_config_key_list():
    m = VQModel(**TINY)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == key_list('vqgan_keys_tiny_config.txt')
    assert sum(p.numel() for p in m.parameters()) == 48_018


def test_quantizer_options_add_no_state_dict_entries():
    plain = VQModel(**TINY).state_dict()
    fixed = VQModel(**TINY, ema=True, restart_after=5)
    assert list(fixed.state_dict()) == list(plain)
    fixed.load_state_dict(plain, strict=True)


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return VQModel(**TINY).eval()


@pytest.mark.parametrize('make, err, needle', [
    (lambda x: (x * 255).byte(), TypeError, 'x.float() / 255'),
    (lambda x: x * 255, ValueError, 'divide by 255'),
    (lambda x: x * 2 - 1, ValueError, '(x + 1) / 2'),
    (lambda x: x * 3 - 1, ValueError, 'outside [0,1]'),
    (lambda x: x[:, :1], ValueError, '3 (RGB)'),
    (lambda x: torch.cat([x, x[:, :1]], 1), ValueError, '4 channels'),
    (lambda x: x.permute(0, 2, 3, 1), ValueError, 'channels-last'),
    (lambda x: x[..., :30], ValueError, 'multiples of 4'),
    (lambda x: x[0], ValueError, 'x[None]'),
    (lambda x: x.numpy(), TypeError, 'torch.Tensor'),
])
def test_bad_images(tiny, make, err, needle):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(err, match=None) as e: tiny.encode_indices(make(x))
    assert needle in str(e.value)


@pytest.mark.parametrize('tokens, err, needle', [
    (torch.full((1, 8, 8), 64), ValueError, 'codebook_size=64'),
    (torch.full((1, 8, 8), -1), ValueError, 'valid ids 0..63'),
    (torch.zeros(1, 8, 8), TypeError, 'integer code ids'),
    (torch.zeros(8, 8, dtype=torch.long), ValueError, 'tokens[None]'),
])
def test_bad_tokens(tiny, tokens, err, needle):
    with pytest.raises(err) as e: tiny.decode_indices(tokens)
    assert needle in str(e.value)


def test_checkpoint_for_another_architecture():
    other = VQModel(levels=2, bottleneck_blocks=3, c_hidden=32, codebook_size=128).state_dict()
    with pytest.raises(ValueError) as e: load_vqgan(other, **TINY)
    msg = str(e.value)
    assert 'missing from the VQGAN checkpoint' in msg and 'not in the model' in msg
    assert 'vquantizer.codebook.weight: [128, 4] in the VQGAN checkpoint, but [64, 4] in the model' in msg
    assert 'bottleneck_blocks=3' in msg and 'codebook_size=128' in msg            # the hint names the right config


def test_unet_and_diffusers_checkpoints_are_named():
    with pytest.raises(ValueError, match='U-Net'): load_vqgan({'in_mapper.0.weight': torch.zeros(8, 4)})
    with pytest.raises(ValueError, match='diffusers'): load_vqgan({'vquantizer.embedding.weight': torch.zeros(8, 4)})


def test_load_weights_hints_and_generic_use():
    lin = torch.nn.Linear(3, 2)
    sd = {'module.' + k: v for k, v in lin.state_dict().items()}
    with pytest.raises(ValueError, match="strip that prefix"): check_state_dict(lin, sd)
    with pytest.raises(ValueError, match=r"checkpoint\['state_dict'\]"): check_state_dict(lin, {'state_dict': lin.state_dict()})
    load_weights(lin, sd); load_weights(lin, {'state_dict': sd})                # the reader strips both
    with pytest.raises(ValueError, match=r'weight: \[2, 4\] in the weights, but \[2, 3\]'):
        load_weights(lin, {'weight': torch.zeros(2, 4), 'bias': torch.zeros(2)}, where='weights')
    load_weights(lin, {'weight': torch.ones(2, 3), 'bias': torch.zeros(2)})
    assert lin.weight.sum() == 6


# ------------------------------------------------------------------ save / load
def test_safetensors_round_trip(tmp_path, tiny):
    p = save_vqgan(tiny, tmp_path / 'm.safetensors', metadata={'note': 'hi'})
    assert p.exists() and not list(tmp_path.glob('*.tmp'))                   # atomic write leaves no temp file
    m2 = load_vqgan(p)                                                         # config read from the metadata
    assert m2.config == tiny.config and not m2.training
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(m2.encode_indices(x), tiny.encode_indices(x))
    assert read_state_dict(p)[1]['note'] == 'hi'


@pytest.mark.parametrize('wrap', [lambda sd: sd, lambda sd: {'state_dict': sd, 'iter': 5},
                                  lambda sd: {'module.' + k: v for k, v in sd.items()}])
def test_pt_formats(tmp_path, tiny, wrap):
    p = tmp_path / 'm.pt'
    torch.save(wrap(tiny.state_dict()), p)
    m2 = load_vqgan(p)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), m2.state_dict().values()))


def test_weights_api_round_trip_and_dtype(tmp_path):
    lin = torch.nn.Linear(3, 2)
    p = save_weights(tmp_path / 'w.safetensors', lin.state_dict(), metadata={'config': {'n': 3}, 'note': 'hi'})
    sd, meta = read_state_dict(p, dtype=torch.bfloat16)
    assert meta == {'config': {'n': 3}, 'note': 'hi'} and sd['weight'].dtype == torch.bfloat16
    assert sorted(os.listdir(tmp_path)) == ['w.safetensors']                   # no temp file left
    with torch.device('meta'): m = torch.nn.Linear(3, 2)
    assert torch.equal(load_weights(m, p).weight, lin.weight)                  # a meta model gets real tensors
    tied = {'a': torch.ones(2), 'b': None}; tied['b'] = tied['a']              # shared memory is copied, not refused
    assert torch.equal(read_state_dict(save_weights(tmp_path / 't.safetensors', tied))[0]['b'], torch.ones(2))
    with pytest.raises(ValueError, match='safetensors'): save_weights(tmp_path / 'w.pt', lin.state_dict())


def test_broken_weight_files_name_the_file(tmp_path):
    good = save_weights(tmp_path / 'good.safetensors', torch.nn.Linear(3, 2).state_dict()).read_bytes()
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / 'good.pt')
    cases = {'truncated.safetensors': good[:len(good) // 2], 'empty.safetensors': b'', 'empty.pt': b'',
             'text.pt': b'hello', 'truncated.pt': (tmp_path / 'good.pt').read_bytes()[:300]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f'(?s){name}.*(save it again|not a state dict)'): read_state_dict(tmp_path / name)
    torch.save(torch.zeros(3), tmp_path / 'tensor.pt')
    with pytest.raises(ValueError, match='tensor.pt holds a Tensor'): load_vqgan(tmp_path / 'tensor.pt')


class _Evil:
    def __reduce__(self): return (print, ('this must not run',))


def test_pickles_are_read_with_weights_only(tmp_path):
    p = tmp_path / 'evil.pt'
    torch.save({'x': _Evil()}, p)
    with pytest.raises(ValueError, match='weights_only=True'): load_vqgan(p)
    with pytest.raises(FileNotFoundError): load_vqgan(tmp_path / 'nope.pt')


# ------------------------------------------------------------------ model behaviour
def test_shapes_and_api(tiny):
    x = torch.rand(2, 3, 32, 24)
    qe, z, ids, loss = tiny.encode(x)
    assert qe.shape == z.shape == (2, 4, 8, 6) and ids.shape == (2, 8, 6) and ids.dtype == torch.long and loss.ndim == 0
    out = tiny.decode_indices(ids)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(tiny.decode(qe).clamp(0, 1), out, atol=1e-5)
    rec_q, _ = tiny(x); rec_c, _ = tiny(x, quantize=False)                     # issue #28: forward(x, quantize) works
    assert rec_q.shape == rec_c.shape == x.shape


def test_straight_through_and_losses():
    vq = VectorQuantizer(4, 16)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq, (l_cb, l_commit), ids = vq(z)
    (zq * 2).sum().backward()
    assert torch.equal(z.grad, torch.full_like(z, 2.0))
    assert torch.allclose(l_cb, l_commit)                                      # same value, different gradients


def test_ema_moves_codes_to_cluster_means():
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 2, ema=True, decay=0.5).train()
    vq.codebook.weight.data = torch.tensor([[-1., 0.], [1., 0.]])
    z = torch.tensor([[-3., 1.], [3., 1.]]).repeat(50, 1)[:, :, None, None]   # [100, 2, 1, 1]
    for _ in range(30): vq(z)
    assert torch.allclose(vq.codebook.weight, torch.tensor([[-3., 1.], [3., 1.]]), atol=1e-2)
    assert not vq.codebook.weight.requires_grad


def test_dead_codes_are_restarted():
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 8, restart_after=3).train()
    z = torch.randn(256, 2, 1, 1) + 5                                          # far from the ±1/K initial codes
    before = code_usage(vq(z)[2], 8)['used']
    for _ in range(4): vq(z)
    assert vq.restarts > 0 and code_usage(vq(z)[2], 8)['used'] > before
    vq.eval(); n = vq.restarts; vq(z); assert vq.restarts == n                 # no restarts outside training


def test_code_usage_and_psnr():
    u = code_usage(torch.tensor([0, 0, 1, 1]), 4)
    assert u['used'] == 0.5 and math.isclose(u['perplexity'], 2.0)
    x = torch.rand(2, 3, 8, 8)
    assert math.isclose(psnr(x, x), 120.0) and 0 < psnr(x, 1 - x) < 10


def test_kmeans_helpers():
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(x), x.shape), x)
    C = patch_kmeans(x, 8, iters=3)
    assert C.shape == (8, 48) and kmeans_reconstruct(x, C).shape == x.shape


def test_train_smoke_with_discriminator(tiny):
    m = VQModel(**TINY, ema=True, restart_after=2)
    x = torch.rand(16, 3, 16, 16)
    log = train_vqgan(m, x, steps=4, batch_size=4, disc=0.1, disc_start=1, log_every=2, progress=False)
    assert [r['step'] for r in log] == [2, 4] and all(math.isfinite(r['loss']) for r in log)
    assert not m.training and m.vquantizer.restart_after == 2                   # restored after restart_until
    with pytest.raises(ValueError, match='divide by 255'): train_vqgan(m, x * 255, steps=1, progress=False)


def test_train_bf16_autocast_runs():
    m = VQModel(**TINY)
    log = train_vqgan(m, torch.rand(8, 3, 16, 16), steps=2, batch_size=4, bf16=True, log_every=1, progress=False)
    assert all(math.isfinite(r['loss']) for r in log)


# ------------------------------------------------------------------ the shipped tokenizer
@pytest.mark.skipif(not (DATA / 'small_vqgan.safetensors').exists(), reason='weights not trained yet')
def test_small_vqgan_round_trip():
    from paella_nb.data import shapes_dataset, images_tensor
    m = small_vqgan()
    assert not m.training and m.config == {**SMALL_VQGAN_CONFIG, 'scale_factor': 0.3764}
    assert (DATA / 'small_vqgan.safetensors').stat().st_size < 8e6
    x = images_tensor(shapes_dataset(64, split='test', cache=False))
    ids = m.encode_indices(x)
    assert ids.shape == (64, 8, 8) and ids.max() < 1024
    assert psnr(m.decode_indices(ids), x) > 30


def test_ship_small_vqgan_is_explicit_and_checked(tmp_path, monkeypatch, tiny):
    import paella_nb.vqgan as V
    from paella_nb.vqgan import ship_small_vqgan
    data = tmp_path / 'data'; data.mkdir(); run = tmp_path / 'run'
    monkeypatch.setattr(V, 'data_path', lambda name='': data / name)
    save_vqgan(tiny, run / 'small_vqgan.safetensors'); (run / 'small_vqgan.json').write_text('{"shipped": {}}')
    assert ship_small_vqgan(run) == data / '' and load_vqgan(data / 'small_vqgan.safetensors').config == tiny.config
    (run / 'small_vqgan.safetensors').write_bytes(b'')                        # a broken run is refused
    with pytest.raises(ValueError, match='small_vqgan.safetensors'): ship_small_vqgan(run)
    assert load_vqgan(data / 'small_vqgan.safetensors').config == tiny.config
