"Tests for paella_nb.unet: checkpoint layout, forward in fp32/bf16, ByT5-small width, attention reweighting, bad input."
import json, math, os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

from paella_nb.unet import (Paella, PaellaConfig, PAELLA_V3, PAELLA_TINY, AttnBlock, load_paella, save_paella,
                            blog_attn_weights, GlobalResponseNorm)
from paella_nb.vqgan import check_state_dict

DATA = Path(__file__).resolve().parent.parent / 'data'


@pytest.fixture(autouse=True)
def no_grad():
    "Forward passes only; scoped per test so that grad mode does not leak into other test modules."
    with torch.no_grad():
        yield


def read_keys(name):
    lines = (DATA / name).read_text().splitlines()
    return {k: tuple(json.loads(s)) for k, s in (l.split('\t') for l in lines if l)}


def inputs(cfg=PAELLA_TINY, B=2, H=16, W=16, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randint(0, cfg.num_labels, (B, H, W), generator=g), r=torch.rand(B, generator=g),
                byt5=torch.randn(B, L, cfg.byt5_embd, generator=g), clip=torch.randn(B, cfg.clip_embd, generator=g),
                clip_image=torch.randn(B, cfg.clip_embd, generator=g))


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    m = Paella(**asdict(PAELLA_TINY)).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.02)   # stand-in for training: non-trivial outputs
    return m


# ---- layout -------------------------------------------------------------------------------------------------
def test_released_config_on_meta_matches_checkpoint_keys():
    with torch.device('meta'):
        m = Paella(**asdict(PAELLA_V3))
    ref = read_keys('paella_v3_unet_keys.txt')
    ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert len(ref) == 844
    assert list(ours) == list(ref)
    assert ours == ref
    assert sum(p.numel() for p in m.parameters()) == 1_008_350_592
    # a state dict with exactly those keys (empty tensors on meta) loads strictly
    sd = {k: torch.empty(s, device='meta') for k, s in ref.items()}
    res = m.load_state_dict(sd, strict=True, assign=True)
    assert not res.missing_keys and not res.unexpected_keys
    check_state_dict(m, sd)   # no error


def test_class_defaults_are_the_original_ones():
    assert asdict(PaellaConfig()) == dict(c_in=256, c_out=256, num_labels=8192, c_r=64, patch_size=2, c_cond=1024,
                                          c_hidden=[640, 1280, 1280], nhead=[-1, 16, 16], blocks=[6, 16, 6],
                                          level_config=['CT', 'CTA', 'CTA'], clip_embd=1024, byt5_embd=1536,
                                          clip_seq_len=4, kernel_size=3, dropout=0.1, self_attn=True)
    import inspect                                              # one source of truth: Paella's defaults are PaellaConfig's
    defaults = {k: p.default for k, p in inspect.signature(Paella.__init__).parameters.items() if k != 'self'}
    assert defaults == asdict(PaellaConfig())
    with torch.device('meta'):
        m = Paella()
    assert m.byt5_mapper.in_features == 1536 and m.num_labels == 8192 and m.latent_multiple == 8


def test_tiny_config_matches_key_list():
    m = Paella(**asdict(PAELLA_TINY))
    ref = read_keys('paella_v3_unet_keys_tiny_config.txt')
    assert list(m.state_dict()) == list(ref)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == ref
    assert sum(p.numel() for p in m.parameters()) == 525_408


def test_init():
    m = Paella(**asdict(PAELLA_TINY)).eval()
    inp = inputs()
    logits = m(**inp)
    assert logits.shape == (2, 512, 16, 16)
    assert logits.abs().max() == 0                       # zero clf conv: uniform prediction at init
    assert torch.equal(m.out_mapper[1].weight[:, :, 0, 0], m.in_mapper[0].weight)
    assert all((b.mapper.weight == 0).all() for lvl in list(m.down_blocks) + list(m.up_blocks) for b in lvl
               if type(b).__name__ == 'TimestepBlock')


# ---- forward --------------------------------------------------------------------------------------------------
def test_forward_fp32_autocast_pure_bf16(tiny):
    inp = inputs()
    ref = tiny(**inp)
    assert ref.shape == (2, 512, 16, 16) and ref.dtype == torch.float32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ac = tiny(**inp)
    m_bf = Paella(**asdict(PAELLA_TINY)).eval()
    m_bf.load_state_dict(tiny.state_dict())
    m_bf.to(torch.bfloat16)
    bf = m_bf(**inp)                                     # fp32 r/byt5/clip inputs are cast to bf16
    assert bf.dtype == torch.bfloat16 and m_bf.gen_r_embedding(inp['r']).dtype == torch.bfloat16
    for out in (ac, bf):
        assert torch.isfinite(out.float()).all()
        assert ((out.float() - ref).norm() / ref.norm()) < 0.05


def test_forward_other_sizes_and_optional_conditions(tiny):
    inp = inputs(H=8, W=24, L=3)
    assert tiny(**inp).shape == (2, 512, 8, 24)
    assert tiny(inp['x'], 0.5, inp['byt5']).shape == (2, 512, 8, 24)        # float r, no CLIP parts
    two = tiny(**(inp | dict(clip_image=[inp['clip_image'], -inp['clip_image']])))   # list of image embeddings
    assert two.shape == (2, 512, 8, 24)


def test_byt5_small_width():
    "Issue #23: a smaller ByT5 just means Paella(byt5_embd=d_model)."
    transformers = pytest.importorskip('transformers')
    cfg = transformers.T5Config(d_model=1472, num_layers=1, num_heads=2, d_kv=8, d_ff=64, vocab_size=384)
    torch.manual_seed(0)
    enc = transformers.T5EncoderModel(cfg).eval()
    tok = transformers.ByT5Tokenizer()
    ids = tok(['a red circle on a white background'], return_tensors='pt', padding='longest')
    byt5 = enc(input_ids=ids.input_ids).last_hidden_state                # [1, L, 1472]
    assert byt5.shape[-1] == 1472
    unet = Paella(**(asdict(PAELLA_TINY) | dict(byt5_embd=1472))).eval()
    x = torch.randint(0, 512, (1, 16, 16))
    assert unet(x, torch.tensor([0.5]), byt5).shape == (1, 512, 16, 16)
    with pytest.raises(ValueError, match=r'1472.*byt5_embd=40.*Paella\(byt5_embd=1472\)'):
        Paella(**asdict(PAELLA_TINY))(x, torch.tensor([0.5]), byt5)


# ---- attention ------------------------------------------------------------------------------------------------
def test_attn_weights_none_equals_plain_mha():
    torch.manual_seed(0)
    blk = AttnBlock(32, c_cond=24, nhead=4).eval()
    x, cond = torch.randn(2, 32, 4, 4), torch.randn(2, 7, 24)
    plain = blk(x, cond)
    # the same computation written out with the stock nn.MultiheadAttention
    xf = blk.norm(x).flatten(2).transpose(1, 2)                         # [B, HW, C]
    kv = torch.cat([xf, blk.kv_mapper(cond)], 1)
    manual = x + blk.attention.attn(xf, kv, kv, need_weights=False)[0].transpose(1, 2).view(2, 32, 4, 4)
    assert torch.equal(plain, manual)
    torch.testing.assert_close(blk(x, cond, attn_weights=torch.ones(7)), plain, atol=1e-5, rtol=1e-5)
    assert isinstance(blk.attention.attn, nn.MultiheadAttention)


def test_attn_weights_semantics(tiny):
    inp = inputs()
    base = tiny(**inp)
    w = blog_attn_weights(6)
    assert w.tolist() == pytest.approx([1.2, 1.2, 0.4, 0.4, 0.4, 0.4])
    out = tiny(**inp, attn_weights=w)
    assert (out - base).abs().max() > 1e-4
    # per-sample weights: row 0 reweighted, row 1 untouched (batched CFG: only the conditional half is reweighted)
    wb = torch.stack([w, torch.ones(6)])
    outb = tiny(**inp, attn_weights=wb)
    torch.testing.assert_close(outb[0], out[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outb[1], base[1], atol=1e-4, rtol=1e-4)
    # weights only touch the last n keys: weight 1 on them is a no-op
    torch.testing.assert_close(tiny(**inp, attn_weights=torch.ones(14)), base, atol=1e-4, rtol=1e-4)


def test_train_mode_dropout_runs(tiny):
    tiny.train()
    try:
        a = tiny(**inputs())
        b = tiny(**inputs())
        assert not torch.equal(a, b)      # dropout active
    finally:
        tiny.eval()


# ---- noising helpers / sampler ----------------------------------------------------------------------------------
def test_blog_sampler_runs(tiny):
    "The blog's 12-line loop (exported as `sampling.sampler_loop`) runs on the tiny U-Net."
    from paella_nb.sampling import sampler_loop
    inp = inputs()
    cond = dict(byt5=inp['byt5'], clip=inp['clip'])
    uncond = dict(byt5=torch.zeros(2, 1, PAELLA_TINY.byt5_embd), clip=torch.zeros_like(inp['clip']))
    steps, latent_shape = 3, (2, 16, 16)
    x = torch.randint(0, tiny.num_labels, size=latent_shape)
    sampled = sampler_loop(tiny, x, cond, uncond, torch.linspace(1.0, 0.0, steps + 1), torch.linspace(0.7, 0.3, steps),
                           [8.0] * steps, renoise_steps=2)
    assert sampled.shape == latent_shape and sampled.dtype == torch.long


def test_add_noise_and_loss_weight_methods(tiny):
    x = torch.randint(0, 512, (2, 8, 8))
    noised, mask = tiny.add_noise(x, torch.tensor([0., 1.]), random_x=torch.zeros_like(x))
    assert torch.equal(noised[0], x[0]) and (noised[1] == 0).all() and mask.dtype == torch.long
    w = tiny.get_loss_weight(torch.tensor([0., 1.]), mask)
    assert torch.allclose(w[0], torch.full((8, 8), 0.3)) and (w[1] == 1).all()


# ---- loading ------------------------------------------------------------------------------------------------------
def test_load_formats_and_bf16(tiny, tmp_path):
    inp = inputs()
    base = tiny(**inp)
    torch.save(tiny.state_dict(), tmp_path / 'raw.pt')
    torch.save({'state_dict': tiny.state_dict(), 'iter': 3}, tmp_path / 'wrapped.pt')
    torch.save({'module.' + k: v for k, v in tiny.state_dict().items()}, tmp_path / 'ddp.pt')
    for name in ['raw.pt', 'wrapped.pt', 'ddp.pt']:
        m = Paella.from_checkpoint(tmp_path / name, **asdict(PAELLA_TINY))
        assert not m.training and torch.equal(m(**inp), base), name
    m = load_paella(save_paella(tiny, tmp_path / 'w.safetensors'))             # config from metadata
    assert torch.equal(m(**inp), base)
    m = load_paella(save_paella(tiny, tmp_path / 'w.pt'), dtype=torch.bfloat16)  # config from the wrapper
    assert m.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 and not p.is_meta for p in m.parameters())
    assert ((m(**inp).float() - base).norm() / base.norm()) < 0.05
    m = load_paella(tiny.state_dict(), **asdict(PAELLA_TINY))                  # a state dict in memory
    assert torch.equal(m(**inp), base)


def test_load_wrong_config_lists_keys(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / 'raw.pt')
    with pytest.raises(ValueError) as e:
        load_paella(tmp_path / 'raw.pt', **(asdict(PAELLA_TINY) | dict(byt5_embd=1472)))
    msg = str(e.value)
    assert 'byt5_mapper.weight: [64, 40] in the checkpoint' in msg and 'but [64, 1472] in the model' in msg
    assert 'build the model with byt5_embd=40' in msg
    with pytest.raises(ValueError) as e:
        load_paella(tmp_path / 'raw.pt', **(asdict(PAELLA_TINY) | dict(blocks=[1, 3, 1])))
    assert 'keys the model needs are missing' in str(e.value) and 'down_blocks.1.7' in str(e.value)
    sd = dict(tiny.state_dict()); sd['extra.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match='1 keys in the state dict are not in the model: extra.weight'):
        load_paella(sd, **asdict(PAELLA_TINY))
    with pytest.raises(FileNotFoundError):
        load_paella(tmp_path / 'nope.pt', **asdict(PAELLA_TINY))


# ---- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('change, pattern', [
    (lambda i: dict(x=i['x'][:, :12]), r'multiples of 8.*12x16'),
    (lambda i: dict(x=i['x'][0]), r'shape \[B, H, W\]'),
    (lambda i: dict(x=i['x'] + 512), r'token ids must lie in \[0, 512\)'),
    (lambda i: dict(x=i['x'] - 1000), r'token ids must lie in \[0, 512\)'),
    (lambda i: dict(byt5=torch.randn(2, 6, 1472)), r'width 1472 .*byt5_embd=40.*Paella\(byt5_embd=1472\)'),
    (lambda i: dict(byt5=torch.randn(2, 40)), r'last_hidden_state \[B, L, 40\]'),
    (lambda i: dict(byt5=torch.randn(1, 6, 40)), r'byt5 has batch size 1 but x has 2'),
    (lambda i: dict(r=torch.tensor([0.5, 1.5])), r'r must lie in \[0, 1\]'),
    (lambda i: dict(r=-0.1), r'r must lie in \[0, 1\]'),
    (lambda i: dict(r=torch.rand(3)), r'one noise level per batch element, shape \[2\]'),
    (lambda i: dict(clip=torch.randn(2, 47)), r'clip must be .* \[2, 48\]'),
    (lambda i: dict(clip_image=[torch.randn(2, 48), torch.randn(3, 48)]), r'clip_image must be'),
    (lambda i: dict(attn_weights=torch.ones(15)), r'last n <= 14 condition tokens'),
    (lambda i: dict(byt5=i['byt5'] * float('nan')), r'byt5 holds NaN or inf'),
    (lambda i: dict(clip=i['clip'] / 0), r'clip holds NaN or inf'),
    (lambda i: dict(clip_image=[i['clip_image'], i['clip_image'] * float('nan')]), r'clip_image holds NaN or inf'),
    (lambda i: dict(r=torch.tensor([0.5, float('nan')])), r'r must lie in \[0, 1\].*NaN'),
    (lambda i: dict(r=float('nan')), r'r must lie in \[0, 1\]'),
])
def test_bad_input_value_errors(tiny, change, pattern):
    inp = inputs()
    with pytest.raises(ValueError, match=pattern):
        tiny(**(inp | change(inp)))


def test_bad_input_type_errors(tiny):
    inp = inputs()
    with pytest.raises(TypeError, match='int64'):
        tiny(**(inp | dict(x=inp['x'].float())))


def test_bad_config():
    with pytest.raises(ValueError, match='one entry per level'):
        Paella(**(asdict(PAELLA_TINY) | dict(blocks=[1, 2])))
    with pytest.raises(ValueError, match='only the letters'):
        Paella(**(asdict(PAELLA_TINY) | dict(level_config=['CT', 'CTX', 'CTA'])))
    with pytest.raises(ValueError, match='nhead=3 does not divide'):
        Paella(**(asdict(PAELLA_TINY) | dict(nhead=[-1, 3, 4])))


def test_validation_can_be_skipped_and_compiles(tiny):
    inp = inputs()
    base = tiny(**inp)
    tiny.validate_inputs = False
    try:
        assert torch.equal(tiny(**inp), base)
    finally:
        tiny.validate_inputs = True
    compiled = torch.compile(tiny, backend='eager', fullgraph=True)   # checks are traceable without graph breaks
    torch.testing.assert_close(compiled(**inp), base)


# ---- the sampler's fast path: Paella.condition + forward_cached ----------------------------------------------------
def test_forward_cached_matches_forward(tiny):
    """One group through the cache, and two groups of different lengths in one batch, agree with `forward` on each
    group within 1e-5 relative (GRN's norm is rounded otherwise), also with re-weighting and without CLIP parts."""
    inp = inputs()
    c_in = {k: inp[k] for k in ('byt5', 'clip', 'clip_image')}
    u_in = dict(byt5=torch.randn(2, 3, PAELLA_TINY.byt5_embd))
    w = blog_attn_weights(6)
    cache = tiny.condition(c_in | dict(attn_weights=w), u_in)
    assert cache.sizes == [2, 2]
    alone, want = tiny.forward_cached(inp['x'], inp['r'], cache.group(0)), tiny(inp['x'], inp['r'], **c_in, attn_weights=w)
    assert ((alone - want).abs().max() / want.abs().max()).item() < 1e-5 and torch.equal(alone.argmax(1), want.argmax(1))
    assert not GlobalResponseNorm.fast_norm                          # the switch is put back after the call
    both = tiny.forward_cached(torch.cat([inp['x']] * 2), torch.cat([inp['r']] * 2), cache)
    plain = torch.cat([tiny(inp['x'], inp['r'], **c_in, attn_weights=w), tiny(inp['x'], inp['r'], **u_in)])
    assert ((both - plain).abs().max() / plain.abs().max()).item() < 1e-5
    assert torch.equal(both.argmax(1), plain.argmax(1))


def test_forward_cached_bad_input(tiny):
    inp = inputs()
    cache = tiny.condition(dict(byt5=inp['byt5']))
    with pytest.raises(ValueError, match='condition cache holds groups'):
        tiny.forward_cached(inp['x'][:1], inp['r'][:1], cache)
    with pytest.raises(ValueError, match='token ids must lie'):
        tiny.forward_cached(inp['x'] + 10_000, inp['r'], cache)
    with pytest.raises(ValueError, match='does not match byt5_embd'):
        tiny.condition(dict(byt5=torch.randn(2, 6, 7)))
    with pytest.raises(ValueError, match='each group of Paella.condition'):
        tiny.condition(dict(byt5=inp['byt5'], mask=None))


def test_load_does_not_import_dynamo(tmp_path):
    "Building on the meta device skips `normal_`, whose meta version imports torch._dynamo (a second at start-up)."
    import subprocess, sys
    save_paella(Paella(**asdict(PAELLA_TINY)), tmp_path / 'u.safetensors')
    code = (f"import sys; from paella_nb.unet import load_paella; load_paella({str(tmp_path / 'u.safetensors')!r}); "
            "print('torch._dynamo' in sys.modules)")
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout.strip() == 'False'
