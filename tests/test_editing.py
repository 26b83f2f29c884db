"""Chapter 10 (paella_nb.editing): the editing functions on the shipped models, their guard rails, and the pipeline's
CLIP-image and prior hooks."""
import numpy as np, pytest, torch
from PIL import Image
from paella_nb.data import shapes_dataset, images_tensor, to_tensor
from paella_nb.sampling import PaellaPipeline, available_models
from paella_nb.editing import (token_mask, box_mask, source_tokens, inpaint, outpaint, edit, interpolate, variations, slerp,
                               mix_inputs, attention_weights, object_box, with_prior, PriorModel, PriorConfig)

pytestmark = pytest.mark.skipif(not {'shapes-small', 'shapes-clip'} <= set(available_models()),
                                reason='the shipped shapes models are not in this copy')

@pytest.fixture(scope='module')
def pipe(): return PaellaPipeline.from_pretrained('shapes-small')

@pytest.fixture(scope='module')
def clip_pipe(): return PaellaPipeline.from_pretrained('shapes-clip')

@pytest.fixture(scope='module')
def src(): return images_tensor(shapes_dataset(3, split='test', seed=5))        # [3, 3, 32, 32]

def test_token_mask_any_pixel_repaints_its_token():
    m = torch.zeros(32, 32, dtype=torch.bool); m[5, 9] = True
    tm = token_mask(m)
    assert tm.shape == (8, 8) and tm.dtype == torch.bool and tm.nonzero().tolist() == [[1, 2]]
    rnd = torch.rand(32, 32) > 0.9
    up = token_mask(rnd).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert (up | ~rnd).all()                                                     # every masked pixel is covered
    assert token_mask(torch.ones(16, 24), factor=8).shape == (2, 3)

def test_masks_from_pictures_and_bad_masks():
    a = np.zeros((32, 32), np.uint8); a[:8, :8] = 255
    assert token_mask(Image.fromarray(a)).sum() == 4 and token_mask(Image.fromarray(a).convert('1')).sum() == 4
    with pytest.raises(ValueError, match='not binary'): token_mask(torch.rand(32, 32))
    with pytest.raises(ValueError, match='nothing to repaint'): token_mask(torch.zeros(32, 32))
    with pytest.raises(ValueError, match='one \\[H, W\\]'): token_mask(torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match='multiples'): token_mask(torch.ones(30, 32))

def test_inpaint_keeps_every_other_token_exactly(pipe, src):
    mask = object_box(src[0])
    a = inpaint(pipe, src[0], mask, 'a large blue square in the center', n=2, seed=3, return_tokens=True)
    b = inpaint(pipe, src[0], mask, 'a large blue square in the center', n=2, seed=3, return_tokens=True)
    keep = ~token_mask(mask)
    assert torch.equal(a, b) and a.shape == (2, 8, 8)
    assert (a[:, keep] == source_tokens(pipe, src[0])[:, keep]).all()
    with pytest.raises(ValueError, match='not binary'): inpaint(pipe, src[0], torch.rand(32, 32), 'x')

def test_outpaint_sizes_and_the_source_in_place(pipe, src):
    "The source is encoded on a white canvas of the final size (no seam) and its tokens are pinned there."
    white = lambda pad: pipe.vqgan.encode_indices(torch.nn.functional.pad(src[1:2], pad, value=1.0))[0]
    t = outpaint(pipe, src[1], 'a large red circle on the right', seed=0, return_tokens=True)
    assert t.shape == (1, 8, 16) and torch.equal(t[0, :, :8], white((0, 32, 0, 0))[:, :8])
    t = outpaint(pipe, src[1], 'a small blue circle at the top', grow=dict(top=32), seed=0, return_tokens=True)
    assert t.shape == (1, 16, 8) and torch.equal(t[0, 8:], white((0, 0, 32, 0))[8:])
    inner = source_tokens(pipe, src[1])[0, 1:-1, 1:-1]                          # away from its edge, the source's own tokens
    assert (t[0, 9:-1, 1:-1] == inner).float().mean() > 0.9
    assert outpaint(pipe, src[1], 'a red circle', grow=dict(left=32, bottom=32))[0].size == (64, 64)
    for bad, msg in ((dict(right=16), 'multiple of 32'), (dict(up=32), 'keys among'), (dict(right=0), 'adds no pixels'),
                     ([32], 'dict of pixels')):
        with pytest.raises(ValueError, match=msg): outpaint(pipe, src[1], 'x', grow=bad)

def test_edit_is_reproducible_and_checks_its_source(pipe, src):
    a = edit(pipe, src[2], 'a small red square at the top', strength=0.5, n=2, seed=1, return_tokens=True)
    assert torch.equal(a, edit(pipe, src[2], 'a small red square at the top', strength=0.5, n=2, seed=1, return_tokens=True))
    for s in (0, 1.5, True, '0.5'):
        with pytest.raises(ValueError, match='strength'): edit(pipe, src[2], 'x', strength=s)
    with pytest.raises(ValueError, match='resize it'): edit(pipe, src[2][:, :16], 'x')
    with pytest.raises(ValueError, match='convert it'): edit(pipe, Image.new('RGBA', (32, 32)), 'x')
    with pytest.raises(ValueError, match='convert it'): edit(pipe, Image.new('L', (32, 32)), 'x')
    with pytest.raises(ValueError, match='\\[0, 1\\]'): edit(pipe, src[2] * 255, 'x')
    with pytest.raises(TypeError, match='PIL image or a tensor'): edit(pipe, src[2].numpy(), 'x')
    assert edit(pipe, Image.new('RGB', (32, 32), 'white'), 'a large red circle in the center')[0].size == (32, 32)

def test_slerp_keeps_lengths_and_ends():
    x, y = torch.randn(2, 5, 64)
    assert torch.allclose(slerp(x, y, 0.0), x, atol=1e-5) and torch.allclose(slerp(x, y, 1.0), y, atol=1e-5)
    mid = slerp(x, y, 0.5)
    assert torch.allclose(mid.norm(dim=-1), (x.norm(dim=-1) + y.norm(dim=-1)) / 2, atol=1e-4)
    z = torch.zeros(64)
    assert torch.allclose(slerp(z, y[0], 0.25), 0.25 * y[0])                    # padding: falls back to lerp
    a = dict(byt5=torch.randn(1, 3, 8), clip=None); b = dict(byt5=torch.randn(1, 5, 8), clip=None)
    m = mix_inputs(a, b, 0.5)
    assert m['byt5'].shape == (1, 5, 8) and m['clip'] is None

def test_interpolate_gives_a_strip(pipe):
    ims = interpolate(pipe, 'a large red circle in the center', 'a large blue circle in the center', n=3, seed=0)
    assert len(ims) == 3 and all(im.size == (32, 32) for im in ims)
    with pytest.raises(ValueError, match='n must be'): interpolate(pipe, 'a', 'b', n=1)
    with pytest.raises(ValueError, match="'slerp' or 'lerp'"): interpolate(pipe, 'a', 'b', mode='cubic')

def test_variations_need_clip_and_are_reproducible(pipe, clip_pipe, src):
    a = variations(clip_pipe, src[0], n=3, seed=2, return_tokens=True)
    assert a.shape == (3, 8, 8) and torch.equal(a, variations(clip_pipe, src[0], n=3, seed=2, return_tokens=True))
    assert len({tuple(r.flatten().tolist()) for r in a}) > 1                      # not three copies
    with pytest.raises(ValueError, match='no CLIP'): variations(pipe, src[0])

def test_images_condition_the_unet(clip_pipe, src):
    "The same prompt and seed with and without an image embedding give different tokens; images go one per prompt."
    p = ['']
    a = clip_pipe(p, seed=0, return_tokens=True)
    b = clip_pipe(p, seed=0, images=src[:1], return_tokens=True)
    assert not torch.equal(a, b)
    assert clip_pipe(['', ''], n=2, seed=0, images=src[:2], return_tokens=True).shape == (4, 8, 8)
    with pytest.raises(ValueError, match='one image per caption'): clip_pipe(['', ''], images=src[:1])

def test_attention_weights_cover_the_condition_keys(clip_pipe, src):
    inputs = clip_pipe.condition(['a red circle'], src[:1])
    L = inputs['byt5'].shape[1]
    w = attention_weights(inputs)
    assert w.shape == (L + 8,) and (w[-4:] == 0.4).all() and (w[:-4] == 1.2).all()
    assert attention_weights(clip_pipe.condition(['a red circle'])).shape == (L + 4,)   # no image: no image keys
    assert clip_pipe(['a red circle'], seed=0, inputs=inputs, attn_weights=w)[0].size == (32, 32)

def test_the_prior_in_the_pipeline(pipe, clip_pipe):
    with pytest.raises(ValueError, match='no prior'): clip_pipe(['a red circle'], use_prior=True)
    torch.manual_seed(0)
    p = with_prior(PaellaPipeline.from_pretrained('shapes-clip'), PriorModel(clip_r=64, c_hidden=32, num_blocks=1), steps=3)
    a = p(['a red circle', 'a blue square'], seed=4, use_prior=True, return_tokens=True)
    assert torch.equal(a, p(['a red circle', 'a blue square'], seed=4, use_prior=True, return_tokens=True))
    state = torch.random.get_rng_state()
    p(['a red circle'], seed=4, use_prior=True)
    assert torch.equal(state, torch.random.get_rng_state())                        # private generators only
    with pytest.raises(ValueError, match='not both'): p(['a'], use_prior=True, images=torch.ones(1, 3, 32, 32))
    with pytest.raises(ValueError, match='not trained together'): with_prior(clip_pipe, PriorModel(clip_r=32, c_hidden=32, num_blocks=1))
    with pytest.raises(ValueError, match='no CLIP'): with_prior(pipe, PriorModel(clip_r=64, c_hidden=32, num_blocks=1))

def test_a_clip_conditioned_pipeline_saves_and_loads(clip_pipe, tmp_path):
    "A conditioner holding the small CLIP round-trips (its config once named a CLIP open_clip does not know)."
    from paella_nb.conditioning import Conditioner
    from paella_nb.small_data import small_clip_encoder
    enc = small_clip_encoder()
    c = Conditioner(clip_pipe.conditioner.text_encoder, enc)
    c.save_pretrained(tmp_path / 'cond')
    back = Conditioner.from_pretrained(tmp_path / 'cond')
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(back.clip.encode_image(x), enc.encode_image(x), atol=1e-6)
    clip_pipe.save_pretrained(tmp_path / 'pipe')
    assert PaellaPipeline.from_pretrained(tmp_path / 'pipe').conditioner.clip_embd == 64
