"Sampling: the loop, reproducible seeds, schedules, img2img / keep-mask, bad input, the pipeline, the widget and the CLI."
import json, os
from pathlib import Path
from dataclasses import asdict

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np
import pytest
import torch

import paella_nb.sampling as S
from paella_nb.conditioning import ByT5Encoder, Conditioner
from paella_nb.cli import sample_cli
from paella_nb.noising import sampling_timesteps
from paella_nb.sampling import PaellaPipeline, sample, sampler_loop
from paella_nb.unet import Paella, PAELLA_TINY
from paella_nb.vqgan import VQModel

K = 64


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def parts():
    torch.manual_seed(0)
    unet = Paella(**{**asdict(PAELLA_TINY), 'num_labels': K}).eval()
    torch.nn.init.normal_(unet.clf[1].weight, std=0.5)            # at init the logits ignore the input: wake them up
    vq = VQModel(levels=2, bottleneck_blocks=1, c_hidden=32, codebook_size=K).eval()
    cond = Conditioner(ByT5Encoder.tiny(d_model=PAELLA_TINY.byt5_embd)).eval()
    return unet, vq, cond


@pytest.fixture(scope='module')
def pipe(parts):
    return PaellaPipeline(*parts, latent_size=8, cfg=3.0, steps=6)


def inputs(cond, n=2):
    prompts = ['a red circle', 'a blue square', 'a green triangle', 'a yellow dot'][:n]
    return cond(prompts), cond.unconditional(n)


def test_same_seed_same_tokens_other_seed_other_tokens(parts):
    unet, _, cond = parts
    x, u = inputs(cond)
    state = torch.get_rng_state()
    a = sample(unet, x, (2, 8, 8), u, seed=1)
    b = sample(unet, x, (2, 8, 8), u, seed=1)
    c = sample(unet, x, (2, 8, 8), u, seed=2)
    assert a.shape == (2, 8, 8) and a.dtype == torch.long and int(a.max()) < K
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)              # the global generator is never used


FROZEN = Path(__file__).parent / 'data' / 'sample_tokens_frozen.json'


def test_same_tokens_as_before_the_loop_was_factored_out(parts):
    "`sample` built around `sampler_loop` draws exactly the tokens the earlier one-piece `sample` drew (recorded)."
    unet, _, cond = parts
    x, u = cond(['a red circle', 'a blue square']), cond.unconditional(2)
    init = torch.randint(0, K, (2, 8, 8), generator=torch.Generator().manual_seed(11))
    keep = torch.zeros(8, 8, dtype=torch.bool); keep[2:6, 2:6] = True
    cases = {'default': dict(seed=1), 'schedules': dict(seed=2, steps=5, cfg=(6.0, 2.0), temperature=(1.0, 0.2)),
             'no_cfg': dict(seed=3, cfg=1.0, steps=4), 'renoise3': dict(seed=4, steps=6, renoise_steps=3),
             'img2img': dict(seed=5, init_tokens=init, t_start=0.6, steps=8),
             'keep': dict(seed=6, init_tokens=init, keep_mask=keep), 'attn': dict(seed=7, attn_weights=torch.full((3,), 1.5))}
    frozen = json.loads(FROZEN.read_text())
    for name, kw in cases.items():
        out, inter = sample(unet, x, (2, 8, 8), u, return_intermediates=True, **kw)
        assert out.flatten().tolist() == frozen[name]['tokens'], name
        assert (int(inter['inputs'].sum()), int(inter['preds'].sum())) == (frozen[name]['inputs_sum'], frozen[name]['preds_sum']), name


def test_sampler_loop_is_the_blog_loop(parts):
    "The loop alone, called the blog's way (global generator), is what `sample` runs: same draws from the same state."
    unet, _, cond = parts
    x, u = inputs(cond)
    g = torch.Generator().manual_seed(9)
    noise = torch.randint(0, K, (2, 8, 8), generator=g)
    got = sampler_loop(unet, noise, x, u, sampling_timesteps(6), torch.linspace(0.7, 0.3, 6), [3.0] * 6, generator=g)
    assert torch.equal(got, sample(unet, x, (2, 8, 8), u, steps=6, cfg=3.0, seed=torch.Generator().manual_seed(9)))
    torch.manual_seed(0); a = sampler_loop(unet, torch.randint(0, K, (2, 8, 8)), x, None, sampling_timesteps(3), [1.0] * 3, [1] * 3)
    torch.manual_seed(0); b = sampler_loop(unet, torch.randint(0, K, (2, 8, 8)), x, None, sampling_timesteps(3), [1.0] * 3, [1] * 3)
    assert torch.equal(a, b) and a.shape == (2, 8, 8)


def test_seed_none_follows_global_seed(parts):
    unet, _, cond = parts
    x, u = inputs(cond)
    torch.manual_seed(5); a = sample(unet, x, (2, 8, 8), u)
    torch.manual_seed(5); b = sample(unet, x, (2, 8, 8), u)
    assert torch.equal(a, b)


def test_schedules_intermediates_and_attn_weights(parts):
    unet, _, cond = parts
    x, u = inputs(cond)
    out, inter = sample(unet, x, (2, 8, 8), u, steps=5, cfg=(6.0, 2.0), temperature=(1.0, 0.2), seed=0,
                        return_intermediates=True)
    assert inter['inputs'].shape == inter['preds'].shape == (5, 2, 8, 8)
    assert torch.allclose(inter['t'], torch.linspace(1, 0, 6)[:5])
    assert torch.equal(inter['preds'][-1], out)                    # the last draw is not re-noised
    w = sample(unet, x, (2, 8, 8), u, seed=0, attn_weights=torch.full((3,), 2.0))
    assert not torch.equal(w, sample(unet, x, (2, 8, 8), u, seed=0))
    assert sample(unet, x, (2, 8, 8), cfg=1.0, seed=0).shape == (2, 8, 8)   # no guidance: no uncond needed


def test_renoise_uses_start_noise(parts):
    "Re-noised positions hold the start noise: the input at step 1 agrees with step 0 wherever it was re-noised."
    unet, _, cond = parts
    x, u = inputs(cond)
    _, inter = sample(unet, x, (2, 8, 8), u, steps=4, seed=3, return_intermediates=True)
    start = inter['inputs'][0]
    renoised = inter['inputs'][1] != inter['preds'][0]
    assert renoised.any() and torch.equal(inter['inputs'][1][renoised], start[renoised])


def test_img2img_and_keep_mask(parts):
    unet, _, cond = parts
    x, u = inputs(cond)
    init = torch.randint(0, K, (2, 8, 8))
    keep = torch.zeros(8, 8, dtype=torch.bool); keep[2:6, 2:6] = True
    out = sample(unet, x, (2, 8, 8), u, seed=0, init_tokens=init, keep_mask=keep)
    assert torch.equal(out[:, keep], init[:, keep])
    _, inter = sample(unet, x, (2, 8, 8), u, seed=0, init_tokens=init, t_start=0.3, steps=3, return_intermediates=True)
    assert torch.allclose(inter['t'], torch.tensor([0.3, 0.2, 0.1]))
    kept = (inter['inputs'][0] == init).float().mean().item()
    assert kept > 0.5                                              # at t_start=0.3 most of the image survives


@pytest.mark.parametrize('kw, err, msg', [
    (dict(steps=0), ValueError, 'steps must be'),
    (dict(steps=1.5), ValueError, 'steps must be'),
    (dict(renoise_steps=12), ValueError, 'renoise_steps must be'),
    (dict(renoise_steps=-1), ValueError, 'renoise_steps must be'),
    (dict(temperature=0), ValueError, 'temperature must be > 0'),
    (dict(temperature=(1.0, 0.0)), ValueError, 'temperature must be > 0'),
    (dict(temperature='hot'), TypeError, 'temperature must be a number'),
    (dict(unconditional_inputs=None), ValueError, 'needs unconditional_inputs'),
    (dict(unconditional_inputs=None, cfg=(1.0, 3.0)), ValueError, 'needs unconditional_inputs'),
    (dict(latent_shape=(2, 6, 8)), ValueError, 'multiples of'),
    (dict(latent_shape=(2, 8)), ValueError, 'latent_shape must be'),
    (dict(latent_shape=(3, 8, 8)), ValueError, 'one prompt per'),
    (dict(t_start=0.5), ValueError, 'pass init_tokens'),
    (dict(t_start=0.0, init_tokens=torch.zeros(2, 8, 8, dtype=torch.long)), ValueError, 't_start must be'),
    (dict(keep_mask=torch.ones(8, 8)), ValueError, 'pass init_tokens'),
    (dict(init_tokens=torch.zeros(2, 4, 4, dtype=torch.long)), ValueError, 'init_tokens must have'),
    (dict(cfg=float('nan')), ValueError, 'cfg must be a finite number'),
    (dict(cfg=(1.0, float('inf'))), ValueError, 'cfg must be a finite number'),
    (dict(temperature=1e-38), ValueError, 'smallest sensible value is 0.0001'),
    (dict(temperature=float('nan')), ValueError, 'temperature must be a finite'),
    (dict(seed=2**70), ValueError, r'seed must be an int in \[0, 2\*\*64 - 1\]'),
    (dict(seed='7'), TypeError, 'seed must be an int'),
])
def test_bad_input(parts, kw, err, msg):
    unet, _, cond = parts
    x, u = inputs(cond)
    args = {**dict(model=unet, model_inputs=x, latent_shape=(2, 8, 8), unconditional_inputs=u), **kw}
    with pytest.raises(err, match=msg):
        sample(**args)


# ---- pipeline -------------------------------------------------------------------------------------------------------
def test_pipeline_roundtrip(pipe, tmp_path):
    ims = pipe(['a red circle', 'a blue square'], seed=0, n=2)
    assert len(ims) == 4 and ims[0].size == (32, 32)
    assert torch.equal(pipe('a red circle', seed=4, return_tokens=True), pipe('a red circle', seed=4, return_tokens=True))
    path = pipe.save_pretrained(tmp_path / 'p')
    assert sorted(p.name for p in path.iterdir()) == ['conditioner', 'pipeline.json', 'unet.safetensors', 'vqgan.safetensors']
    p2 = PaellaPipeline.from_pretrained(path)
    assert p2.config == pipe.config
    ims2 = p2(['a red circle', 'a blue square'], seed=0, n=2)
    assert all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(ims, ims2))
    pipe.save_pretrained(path)                                     # overwriting a pipeline is fine...
    assert not any(p.name.startswith('.p.') for p in tmp_path.iterdir())


def test_pipeline_refusals(pipe, tmp_path):
    (tmp_path / 'mine').mkdir(); (tmp_path / 'mine' / 'thesis.tex').write_text('precious')
    with pytest.raises(FileExistsError, match='not a pipeline folder'):
        pipe.save_pretrained(tmp_path / 'mine')                   # ...but not another folder
    with pytest.raises(FileNotFoundError, match='no shipped model'):
        PaellaPipeline.from_pretrained('surely-not-a-model')
    with pytest.raises(FileNotFoundError, match='pipeline.json'):
        PaellaPipeline.from_pretrained(tmp_path / 'mine')
    with pytest.raises(ValueError, match='non-empty list'): pipe([])
    with pytest.raises(ValueError, match='images per prompt'): pipe('x', n=0)
    with pytest.raises(ValueError, match='steps must be'): pipe('x', steps=0)
    (tmp_path / '.gone.old').mkdir()
    with pytest.raises(FileNotFoundError, match='interrupted'):
        PaellaPipeline.from_pretrained(tmp_path / 'gone')


def test_pipeline_parts_must_match(parts):
    unet, vq, cond = parts
    with pytest.raises(ValueError, match='codes'):
        PaellaPipeline(unet, VQModel(levels=2, bottleneck_blocks=1, c_hidden=32, codebook_size=32), cond)
    with pytest.raises(ValueError, match='byt5_embd'):
        PaellaPipeline(unet, vq, Conditioner(ByT5Encoder.tiny(d_model=48)))


def test_shipped_name_lookup(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path / 'models' / 'shapes-test')
    monkeypatch.setattr(S, 'models_dir', lambda: tmp_path / 'models')
    assert S.available_models() == ['shapes-test']
    assert PaellaPipeline.from_pretrained('shapes-test').config == pipe.config
    with pytest.raises(FileNotFoundError, match='shapes-test'):
        PaellaPipeline.from_pretrained('shapes-other')             # the error lists what exists


# ---- widget and CLI -----------------------------------------------------------------------------------------------
def test_widget_callback(pipe):
    ui, generate = S.sampler_widget(pipe, prompt='a red circle')
    ims = generate()
    assert len(ims) == 4
    ui, generate = S.sampler_widget({'one': pipe, 'two': pipe}, prompt='a red circle', scale=4)
    assert ui.children[0].children[0].options == ('one', 'two') and len(generate()) == 4


def test_cli(pipe, tmp_path, capsys):
    path = pipe.save_pretrained(tmp_path / 'p')
    out = tmp_path / 'missing' / 'dir' / 'x.png'
    assert sample_cli(['a red circle', '--model', str(path), '--out', str(out), '--seed', '3', '--steps', '4']) == 0
    assert out.exists() and 'created folder' in capsys.readouterr().out
    first = out.read_bytes()
    sample_cli(['a red circle', '--model', str(path), '--out', str(out), '--seed', '3', '--steps', '4'])
    assert out.read_bytes() == first                               # same seed, same file
    assert sample_cli(['a red circle', '--model', str(path), '--out', str(tmp_path / 'y.jpg'), '--n', '3',
                       '--cfg', '4', '2', '--temperature', '0.9']) == 0
    assert sorted(p.name for p in tmp_path.glob('y-*.jpg')) == ['y-0.jpg', 'y-1.jpg', 'y-2.jpg']
    assert 'seed' in capsys.readouterr().out
    for bad in (['--out', str(tmp_path / 'z.txt')], ['--out', str(tmp_path)], ['--out', str(out), '--cfg', '1', '2', '3'],
                ['--out', str(out), '--n', '0']):
        with pytest.raises(SystemExit) as e:
            sample_cli(['a red circle', '--model', str(path), *bad])
        assert e.value.code == 2
    with pytest.raises(ValueError, match='steps must be'):
        sample_cli(['a red circle', '--model', str(path), '--out', str(out), '--steps', '0'])


def test_cli_through_main(pipe, tmp_path, capsys):
    from paella_nb.cli import main
    assert main(['sample', 'a red circle', '--model', 'no-such-model', '--out', str(tmp_path / 'a.png')]) == 1
    assert 'no shipped model' in capsys.readouterr().err


def test_tokens_decode_outside_no_grad(parts):
    "Sampled tokens are ordinary tensors (not inference-mode ones): a VQGAN with trainable weights can decode them."
    unet, vq, cond = parts
    x, u = inputs(cond)
    tokens = sample(unet, x, (2, 8, 8), u, seed=0, steps=2)
    assert any(p.requires_grad for p in vq.parameters())
    assert vq.decode_indices(tokens).shape == (2, 3, 32, 32)


# ---- the fast path: condition computed once, guidance batched -------------------------------------------------------
@pytest.mark.parametrize('kw', [dict(seed=1), dict(seed=2, steps=5, cfg=(6.0, 1.0)), dict(seed=3, cfg=1.0),
                                dict(seed=7, attn_weights=torch.full((3,), 1.5)), dict(seed=4, cfg=(1.0, 3.0))])
def test_cached_path_same_tokens_as_plain_forward(parts, kw):
    "`sample` (condition cached, guidance batched) draws the same tokens as `sample(cache=False)` (plain forward)."
    unet, _, cond = parts
    x, u = cond(['a red circle', 'a blue square']), cond.unconditional(2)
    fast, i1 = sample(unet, x, (2, 8, 8), u, return_intermediates=True, **kw)
    slow, i2 = sample(unet, x, (2, 8, 8), u, return_intermediates=True, cache=False, **kw)
    assert torch.equal(fast, slow) and torch.equal(i1['preds'], i2['preds'])


def test_frozen_tokens_also_without_cache(parts):
    unet, _, cond = parts
    x, u = cond(['a red circle', 'a blue square']), cond.unconditional(2)
    frozen = json.loads(FROZEN.read_text())
    assert sample(unet, x, (2, 8, 8), u, seed=1, cache=False).flatten().tolist() == frozen['default']['tokens']


def test_cached_logits_match_plain(parts):
    "One guided call of the wrapper gives the plain forward's logits within 1e-5 relative, for both halves."
    unet, _, cond = parts
    x, u = cond(['a red circle', 'a blue square']), cond.unconditional(2)
    call, ci, ui = S.CachedModel.wrap(unet, x, u, [3.0])
    tok, t = torch.randint(0, K, (2, 8, 8)), torch.full((2,), 0.6)
    with torch.no_grad():
        a, b = call(tok, t, **ci), call(tok, t, **ui)
        pa, pb = unet(tok, t, **x), unet(tok, t, **u)
    for got, want in ((a, pa), (b, pb)):
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5


def test_shipped_model_cached_same_tokens():
    "The shipped small model: 8 prompts, 12 guided steps, the same tokens with and without the cache."
    if 'shapes-small' not in S.available_models(): pytest.skip('shapes-small is not shipped in this copy')
    pipe = PaellaPipeline.from_pretrained('shapes-small')
    prompts = ['a large red circle in the center', 'a small blue square at the top left', 'a green triangle', ''] * 2
    fast = pipe(prompts, seed=0, return_tokens=True)
    slow = pipe(prompts, seed=0, return_tokens=True, cache=False)
    assert torch.equal(fast, slow)
