"Tests for paella_nb.clip (chapter 08): the shipped small CLIP loads, embeds, judges, and refuses bad input."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pytest
import torch
from PIL import Image

from paella_nb.clip import (small_clip, small_clip_info, load_small_clip, save_small_clip, build_clip, clip_r_precision,
                            clip_retrieval, contrastive_loss, SmallClip, ClipConfig, TINY_CLIP)
from paella_nb.data import shapes_dataset, emoji_dataset, images_tensor, data_path, to_pil


@pytest.fixture(scope='module')
def clip():
    return small_clip()


@pytest.fixture(scope='module')
def held_out():
    ds = shapes_dataset(64, split='test')
    return images_tensor(ds), list(ds['caption'])


def test_shipped_files_are_small():
    w, c = data_path('small_clip.safetensors'), data_path('small_clip.json')
    assert w.exists() and c.exists()
    assert w.stat().st_size < 8e6, "keep the shipped CLIP a few MB"
    info = small_clip_info()
    assert info['train_seconds'] > 0 and 'eval' in info


def test_loads_as_open_clip(clip):
    import open_clip
    assert isinstance(clip, SmallClip) and isinstance(clip.model, open_clip.CLIP)
    model, preprocess, tokenizer = clip                                   # unpacks like create_model_and_transforms
    assert 'small_clip' in open_clip.list_models()
    assert clip.image_size == 32 and small_clip() is clip                 # cached


def test_embeddings_shapes_and_norms(clip, held_out):
    x, caps = held_out
    D = clip.embed_dim
    ti = clip.encode_text(caps[:5] + [''])
    assert ti.shape == (6, D) and torch.allclose(ti.norm(dim=-1), torch.ones(6), atol=1e-4)
    ie = clip.encode_image(x[:7])
    assert ie.shape == (7, D) and torch.allclose(ie.norm(dim=-1), torch.ones(7), atol=1e-4)
    assert clip.encode_text('red heart').shape == (1, D)                  # a single string works
    raw_t, raw_i = clip.encode_text(caps[:3], normalize=False), clip.encode_image(x[:3], normalize=False)
    assert not torch.allclose(raw_t.norm(dim=-1), torch.ones(3), atol=1e-2)   # un-normalised really is raw
    assert torch.allclose(torch.nn.functional.normalize(raw_i, dim=-1), ie[:3], atol=1e-5)
    pil = clip.encode_image(to_pil(x[:3]))                                # PIL input gives the same embedding
    assert torch.allclose(pil, ie[:3], atol=1e-2)


def test_r_precision_real_high_noise_low(clip, held_out):
    x, caps = held_out
    real = clip_r_precision(x, caps, clip=clip)
    noise = clip_r_precision(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)), caps, clip=clip)
    assert real >= 0.95, real
    assert noise <= 0.25, noise
    hits = clip_r_precision(x, caps, clip=clip, reduce=False)
    assert hits.shape == (64,) and hits.dtype == torch.bool


def test_r_precision_external_pool_and_determinism(clip, held_out):
    x, caps = held_out
    pool = list(shapes_dataset(400, split='train')['caption'])
    a = clip_r_precision(x, caps, distractors=pool, n=16, seed=3, clip=clip)
    b = clip_r_precision(x, caps, distractors=pool, n=16, seed=3, clip=clip)
    assert a == b and a >= 0.9


def test_retrieval(clip, held_out):
    x, caps = held_out
    r = clip_retrieval(x, caps, clip=clip)
    assert set(r) == {'t2i@1', 't2i@5', 'i2t@1', 'i2t@5'}
    assert r['i2t@5'] >= r['i2t@1'] >= 0.9


@pytest.mark.parametrize('bad, msg', [
    (torch.rand(2, 3, 64, 64), '32×32'),
    (torch.rand(2, 1, 32, 32), '3 colour channels'),
    (torch.rand(2, 32, 32, 3), 'permute'),
    (torch.rand(2, 3, 32, 32) * 2 - 1, '[0, 1]'),
    ((torch.rand(2, 3, 32, 32) * 255).byte(), 'divide by 255'),
    ([Image.new('RGBA', (32, 32))], "convert('RGB')"),
    ([Image.new('RGB', (48, 48))], '32×32'),
    ([], 'empty'),
])
def test_bad_images(clip, bad, msg):
    with pytest.raises(ValueError, match=None) as e:
        clip.encode_image(bad)
    assert msg in str(e.value)


def test_bad_texts_and_counts(clip, held_out):
    x, caps = held_out
    with pytest.raises(ValueError, match='empty'): clip.encode_text([])
    with pytest.raises(TypeError, match='strings'): clip.encode_text(['ok', 3])
    with pytest.raises(ValueError, match='empty'): clip_r_precision(x, [], clip=clip)
    with pytest.raises(ValueError, match='one caption per image'): clip_r_precision(x[:10], caps[:9], clip=clip)
    with pytest.raises(ValueError, match='smaller n'): clip_r_precision(x[:8], caps[:8], clip=clip)
    with pytest.raises(ValueError, match='n='): clip_r_precision(x, caps, n=1, clip=clip)
    with pytest.raises(ValueError, match='one caption per image'): clip_retrieval(x[:10], caps[:9], clip=clip)


def test_save_load_roundtrip_is_atomic_and_exact(tmp_path):
    torch.manual_seed(0)
    m = build_clip(TINY_CLIP).eval()
    with torch.no_grad():                                                 # mimic training: only a few token rows used
        keep = torch.zeros(m.token_embedding.weight.shape[0], dtype=torch.bool); keep[[0, 49406, 49407, 320, 1929]] = True
        m.token_embedding.weight[~keep] = 0
    p = save_small_clip(m, TINY_CLIP, tmp_path / 'mini.safetensors', metadata={'a': 1})
    assert sorted(f.name for f in tmp_path.iterdir()) == ['mini.json', 'mini.safetensors']   # no temp files left
    c = load_small_clip(p)
    x = torch.rand(3, 3, 32, 32)
    ref = m.encode_image((x - torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None])
                         / torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None], normalize=True)
    assert torch.allclose(c.encode_image(x), ref, atol=1e-5)
    assert torch.equal(c.model.token_embedding.weight, m.token_embedding.weight)
    assert small_clip_info(p) == {'a': 1}
    with pytest.raises(FileNotFoundError, match='save_small_clip'): load_small_clip(tmp_path / 'nope.safetensors')


def test_contrastive_loss_multi_positive():
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 0, 1, 2])                                      # rows 0 and 1 share a caption
    t = a.clone(); t[1] = t[0]
    loss_dup = contrastive_loss(a, t, torch.tensor(10.), ids)
    assert torch.isfinite(loss_dup)


@pytest.mark.parametrize('payload', [
    {'pretrained': 'evil.pt', 'weights_only': False},                               # extra keys: never passed on
    'VISION_TIMM',                                                                   # a timm tower (downloads / other code)
    'TEXT_HF',                                                                       # a Hugging Face text tower
    'NOT_INT',
])
def test_config_file_is_read_as_data(tmp_path, payload):
    "The JSON beside the weights is checked against the keys a ClipConfig writes before open_clip ever sees it."
    import json
    m = build_clip(TINY_CLIP).eval()
    p = save_small_clip(m, TINY_CLIP, tmp_path / 'evil.safetensors')
    cfg = json.loads(p.with_suffix('.json').read_text())
    if payload == 'VISION_TIMM': cfg['vision_cfg'].update(timm_model_name='vit_tiny_patch16_224', timm_model_pretrained=True)
    elif payload == 'TEXT_HF': cfg['text_cfg'].update(hf_model_name='evil/model', hf_tokenizer_name='evil/model')
    elif payload == 'NOT_INT': cfg['embed_dim'] = 32.5
    else: cfg.update(payload)
    p.with_suffix('.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match='evil.json'): load_small_clip(p)
    p.with_suffix('.json').write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'): load_small_clip(p)


def test_truncated_weights_name_the_file(tmp_path):
    p = save_small_clip(build_clip(TINY_CLIP).eval(), TINY_CLIP, tmp_path / 'cut.safetensors')
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ValueError, match='cut.safetensors'): load_small_clip(p)
