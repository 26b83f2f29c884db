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
    ds = shapes_dataset(64, split='test', jitter=False)             # drawn as the small CLIP saw them in training
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


# ---- the emoji judge: conv towers against frozen MiniLM sentence vectors ----
import dataclasses, json
import numpy as np
from paella_nb.clip import (emoji_judge, emoji_judge_info, load_emoji_judge, save_emoji_judge, train_emoji_judge,
                            EmojiJudge, JudgeConfig, JudgeTrainConfig, TINY_JUDGE, TINY_JUDGE_TRAIN)


@pytest.fixture(scope='module')
def judge():
    return emoji_judge()


@pytest.fixture(scope='module')
def few_emoji():
    return emoji_dataset(split='train').select(range(0, 1720, 7))          # 246 emoji: fast tiny runs


@pytest.fixture(scope='module')
def tiny_judge(few_emoji):
    cfg = dataclasses.replace(TINY_JUDGE, towers=2)                        # two towers: the averaging path too
    j, hist = train_emoji_judge(cfg, dataclasses.replace(TINY_JUDGE_TRAIN, steps=3), data=few_emoji, log_every=0)
    return j, cfg


def test_shipped_judge_is_small_and_recorded(judge):
    w, c = data_path('emoji_judge.safetensors'), data_path('emoji_judge.json')
    assert w.exists() and c.exists() and w.stat().st_size < 6e6, "keep the shipped judge a few MB"
    rec = emoji_judge_info()['record']
    assert rec['train_seconds'] > 0 and rec['threads'] >= 1 and rec['steps'] > 0 and 'eval' in rec
    assert emoji_judge() is judge and isinstance(judge, EmojiJudge)        # cached


def test_judge_interface(judge):
    ds = emoji_dataset(split='test')
    x, caps = images_tensor(ds.select(range(6))), list(ds['caption'])
    ie, te = judge.encode_image(x), judge.encode_text(caps[:4] + [''])
    assert ie.shape == (6, judge.embed_dim) and te.shape == (5, judge.embed_dim) and judge.image_size == 32
    assert torch.allclose(ie.norm(dim=-1), torch.ones(6), atol=1e-4) and torch.allclose(te.norm(dim=-1), torch.ones(5), atol=1e-4)
    assert judge.encode_text('goat').shape == (1, judge.embed_dim)         # a single string works
    assert torch.allclose(judge.encode_image(to_pil(x)), ie, atol=1e-2)     # PIL input gives the same embedding
    assert judge.similarity(x, caps[:3]).shape == (6, 3)
    with pytest.raises(ValueError, match='32×32'): judge.encode_image(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match='empty'): judge.encode_text([])


def test_judge_sees_unseen_names(judge):
    "The shipped judge on real held-out emoji: clearly above the small CLIP's 0.29, and shuffled captions at chance."
    ds = emoji_dataset(split='test')
    x, caps = images_tensor(ds), list(ds['caption'])
    real = clip_r_precision(x, caps, n=32, clip=judge)
    shuffled = clip_r_precision(x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))], caps, clip=judge)
    assert real >= 0.4 and shuffled < 0.1, (real, shuffled)


def test_tiny_judge_training_lowers_the_loss(few_emoji):
    _, hist = train_emoji_judge(TINY_JUDGE, TINY_JUDGE_TRAIN, data=few_emoji, log_every=0)
    assert np.mean(hist['loss'][-5:]) < np.mean(hist['loss'][:5]) - 0.3
    assert hist['seconds'] > 0 and len(hist['loss']) == TINY_JUDGE_TRAIN.steps


def test_judge_save_load_roundtrip(tmp_path, tiny_judge):
    j, cfg = tiny_judge
    p = save_emoji_judge(j, cfg, tmp_path / 'j.safetensors', TINY_JUDGE_TRAIN, record={'note': 'test'})
    assert sorted(f.name for f in tmp_path.iterdir()) == ['j.json', 'j.safetensors']   # no temp files left
    again = load_emoji_judge(p)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.encode_image(x), j.encode_image(x))
    info = emoji_judge_info(p)
    assert info['record'] == {'note': 'test'} and info['config'] == dataclasses.asdict(cfg)
    with pytest.raises(FileNotFoundError, match='save_emoji_judge'): load_emoji_judge(tmp_path / 'nope.safetensors')


def _saved(tmp_path, tiny_judge, name):
    j, cfg = tiny_judge
    return save_emoji_judge(j, cfg, tmp_path / f'{name}.safetensors', TINY_JUDGE_TRAIN)


def test_judge_weights_that_do_not_fit(tmp_path, tiny_judge):
    from paella_nb.vqgan import save_weights, read_state_dict
    p = _saved(tmp_path, tiny_judge, 'keys')
    sd, _ = read_state_dict(p)
    sd['towers.0.extra'] = torch.zeros(2); del sd['logit_scale']
    save_weights(p, sd)
    with pytest.raises(ValueError, match='keys.safetensors') as e: load_emoji_judge(p)
    assert 'logit_scale' in str(e.value) and 'towers.0.extra' in str(e.value)
    p = _saved(tmp_path, tiny_judge, 'cut')
    p.write_bytes(p.read_bytes()[:300])                                    # a truncated download
    with pytest.raises(ValueError, match='cut.safetensors'): load_emoji_judge(p)


@pytest.mark.parametrize('change, msg', [
    (lambda d: d.update(pretrained='evil.pt'), "'pretrained' is not allowed"),          # unknown top-level key
    (lambda d: d['config'].update(text_model='evil/model'), "'text_model' is not allowed"),   # unknown config key
    (lambda d: d['train'].update(loader='pickle'), "'loader' is not allowed"),           # unknown train key
    (lambda d: d['config'].update(width=8.5), "must be int"),                            # not a whole number
    (lambda d: d['config'].update(towers=True), "must be int"),                          # a bool is no int here
    (lambda d: d['config'].pop('width'), 'every JudgeConfig field'),
    (lambda d: d['config'].update(towers=0), 'positive whole number'),
])
def test_judge_json_is_read_as_data(tmp_path, tiny_judge, change, msg):
    p = _saved(tmp_path, tiny_judge, 'bad')
    d = json.loads(p.with_suffix('.json').read_text()); change(d)
    p.with_suffix('.json').write_text(json.dumps(d))
    with pytest.raises(ValueError, match='bad.json') as e: load_emoji_judge(p)
    assert msg in str(e.value)
    p.with_suffix('.json').write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'): load_emoji_judge(p)
