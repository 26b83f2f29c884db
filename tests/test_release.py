"""Tests for paella_nb.release (chapter 14): the released stack from local files. Checkpoints are written here in the
released formats (`torch.save` of plain state dicts with the released key names) at tiny sizes."""
import json, os, pickle, zipfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from paella_nb.release import (PriorModel, PRIOR_V1, PRIOR_SMALL, ReleasePipeline, convert, load_prior, read_part,
                               sample_prior, prior_loss, choose_dtype, weights_bytes, load_byt5, load_clip,
                               tiny_release, TINY_OPEN_CLIP, TINY_PRIOR)
from paella_nb.unet import Paella, PAELLA_V3, PAELLA_TINY
from paella_nb.vqgan import VQModel, read_state_dict

DATA = Path(__file__).resolve().parent.parent / 'data'
TINY = asdict(TINY_PRIOR)


def read_keys(name):
    return {k: tuple(json.loads(s)) for k, s in (l.split('\t') for l in (DATA / name).read_text().splitlines() if l)}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "The five released files at tiny sizes, written as the release wrote them (torch.save of plain state dicts)."
    d = tmp_path_factory.mktemp('release')
    tiny_release(d)
    return d


def pipe_for(d, **kw):
    return ReleasePipeline(unet=d / 'paella_v3.pt', vqgan=d / 'vqgan_f4.pt', prior=d / 'prior_v1.pt', byt5=d / 'byt5-xl',
                           clip=d / 'open_clip_pytorch_model.bin', unet_config=PAELLA_TINY, clip_model=TINY_OPEN_CLIP, **kw)


# ---- the released layouts on the meta device ------------------------------------------------------------------
def test_released_key_lists_on_meta():
    with torch.device('meta'):
        prior, unet, vq = PriorModel(**asdict(PRIOR_V1)), Paella(**asdict(PAELLA_V3)), VQModel()
    for m, name, n in ((prior, 'prior_v1_keys.txt', 292), (unet, 'paella_v3_unet_keys.txt', 844), (vq, 'vqgan_f4_keys.txt', 122)):
        ref = read_keys(name)
        assert len(ref) == n and {k: tuple(v.shape) for k, v in m.state_dict().items()} == ref
        m.load_state_dict({k: torch.empty(s, device='meta') for k, s in ref.items()}, strict=True, assign=True)
    assert sum(p.numel() for p in prior.parameters()) == 899_770_624
    assert PRIOR_SMALL.clip_r == 64


def test_prior_samples_and_trains():
    torch.manual_seed(0)
    p = PriorModel(**TINY)
    c = torch.randn(3, TINY['clip_r'])
    a, b = sample_prior(p, c, steps=4, seed=1), sample_prior(p, c, steps=4, seed=1)
    assert a.shape == (3, TINY['clip_r']) and torch.equal(a, b) and torch.isfinite(a).all()
    assert sample_prior(p, c, steps=4, sampler='ddim', seed=1).shape == a.shape
    loss = prior_loss(p, torch.randn(4, TINY['clip_r']), torch.randn(4, TINY['clip_r']))
    loss.backward()
    assert loss.item() > 0 and p.blocks[0].weight.grad is not None


# ---- end to end ---------------------------------------------------------------------------------------------------
def test_from_original_tiny_end_to_end(files):
    pipe = pipe_for(files, dtype=torch.float32)
    settings = dict(steps=3, renoise_steps=2, prior_steps=3, latent_size=(8, 8))
    tokens = pipe(['a red circle', 'a cat'], seed=0, return_tokens=True, **settings)
    assert tokens.shape == (2, 8, 8) and tokens.dtype == torch.long
    assert torch.equal(tokens, pipe(['a red circle', 'a cat'], seed=0, return_tokens=True, **settings))
    images = pipe('a red circle', seed=0, use_prior=False, **settings)
    assert len(images) == 1 and images[0].size == (32, 32)


def test_parts_load_in_bf16(files):
    prior = load_prior(files / 'prior_v1.pt', torch.bfloat16)
    assert prior.blocks[0].weight.dtype == torch.bfloat16 and not any(t.is_meta for t in prior.parameters())
    clip = load_clip(files / 'open_clip_pytorch_model.bin', torch.bfloat16, model=TINY_OPEN_CLIP)
    assert clip.encode_text(['a cat']).shape == (1, TINY_OPEN_CLIP['embed_dim'])
    byt5 = load_byt5(files / 'byt5-xl', torch.bfloat16)
    assert byt5.encode(['a cat']).shape[-1] == PAELLA_TINY.byt5_embd and not byt5.mask_padding
    assert choose_dtype('cpu') in (torch.float32, torch.bfloat16)
    tokens = pipe_for(files, dtype=torch.bfloat16)('a cat', seed=0, return_tokens=True, steps=2, renoise_steps=1,
                                                  prior_steps=2, latent_size=(8, 8))
    assert tokens.shape == (1, 8, 8)


def test_convert_round_trip(files, tmp_path):
    dst = convert(files / 'prior_v1.pt', tmp_path / 'prior_v1.safetensors')
    a, _ = read_state_dict(files / 'prior_v1.pt')
    b, meta = read_state_dict(dst)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a) and meta['converted_from'] == 'prior_v1.pt'
    assert torch.equal(load_prior(dst).blocks[0].weight, a['blocks.0.weight'])


def test_weights_bytes_and_cast(files):
    sd = read_part(files / 'prior_v1.pt', 'prior', torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert weights_bytes(sd) * 2 == weights_bytes(read_part(files / 'prior_v1.pt', 'prior'))


# ---- bad input ------------------------------------------------------------------------------------------------
def test_wrong_file_for_a_slot_names_both(files):
    with pytest.raises(ValueError, match=r"(?s)unet slot needs a Paella U-Net.*prior_v1.pt looks like a CLIP prior"):
        read_part(files / 'prior_v1.pt', 'unet')
    with pytest.raises(ValueError, match="prior slot needs a CLIP prior.*looks like a Paella VQGAN"):
        load_prior(files / 'vqgan_f4.pt')


def test_truncated_file_is_named(files, tmp_path):
    bad = tmp_path / 'paella_v3.pt'
    bad.write_bytes((files / 'paella_v3.pt').read_bytes()[:5000])
    with pytest.raises(ValueError, match='paella_v3.pt'):
        read_part(bad, 'unet')


def test_too_little_memory_says_how_much(files, monkeypatch):
    import paella_nb.release as rel
    monkeypatch.setattr(rel, '_available_memory', lambda device: 1000)
    with pytest.raises(MemoryError, match=r"prior \(prior_v1.pt\) in float32 on cpu needs 0.\d+ GB.*bfloat16 it needs"):
        read_part(files / 'prior_v1.pt', 'prior', torch.float32)


def test_old_format_pt_that_cannot_fit_is_refused(files, tmp_path, monkeypatch):
    import paella_nb.release as rel
    torch.save(torch.load(files / 'prior_v1.pt', weights_only=True), tmp_path / 'prior_v1.pt',
               _use_new_zipfile_serialization=False)                 # cannot be memory-mapped: read whole
    assert read_part(tmp_path / 'prior_v1.pt', 'prior')               # fits: loads
    monkeypatch.setattr(rel, '_available_memory', lambda device: 1000)
    with pytest.raises(MemoryError, match=r"old \(non-zip\) format.*needs 0.\d+ GB"):
        read_part(tmp_path / 'prior_v1.pt', 'prior')


def test_missing_paths_and_settings(files, tmp_path):
    with pytest.raises(FileNotFoundError, match='the prior file'):
        ReleasePipeline(files / 'paella_v3.pt', files / 'vqgan_f4.pt', tmp_path / 'nope.pt', files / 'byt5-xl',
                        files / 'open_clip_pytorch_model.bin')
    with pytest.raises(ValueError, match='byt5 must be a folder'):
        ReleasePipeline(files / 'paella_v3.pt', files / 'vqgan_f4.pt', files / 'prior_v1.pt', files / 'prior_v1.pt',
                        files / 'open_clip_pytorch_model.bin')
    pipe = pipe_for(files)
    pipe.load = lambda slot: pytest.fail('loaded a part before checking the call')   # bad calls fail first
    with pytest.raises(TypeError, match='unknown settings'):
        pipe('a cat', stepz=3)
    with pytest.raises(ValueError, match='steps must be an int >= 1'):
        pipe('a cat', steps=0)
    with pytest.raises(ValueError, match='latent_size must be'):
        pipe('a cat', latent_size=(60, 64))
    with pytest.raises(ValueError, match='prior_steps'):
        pipe('a cat', prior_steps=0)
    with pytest.raises(TypeError, match='prompts must contain only str'):
        pipe(['a cat', 3])
    with pytest.raises(ValueError, match="sampler must be 'ddpm' or 'ddim'"):
        sample_prior(PriorModel(**TINY), torch.zeros(1, TINY['clip_r']), sampler='euler')


class Boom:
    def __reduce__(self): return (os.system, ('touch PLANTED_PICKLE_RAN',))


def test_planted_pickle_never_runs(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd = torch.load(files / 'prior_v1.pt', weights_only=True)
    torch.save({**sd, 'extra': Boom()}, tmp_path / 'prior_v1.pt')
    for call in (lambda: read_part(tmp_path / 'prior_v1.pt', 'prior'), lambda: load_prior(tmp_path / 'prior_v1.pt'),
                 lambda: convert(tmp_path / 'prior_v1.pt', tmp_path / 'out.safetensors')):
        with pytest.raises(ValueError, match='weights_only'):
            call()
    assert not (tmp_path / 'PLANTED_PICKLE_RAN').exists()


def test_cast_with_page_dropping_keeps_every_value(tmp_path):
    "Dropping the file's pages after each cast never changes a value (pages shared by neighbours are kept)."
    from paella_nb.release import _drop_pages, _mapped_ranges
    g = torch.Generator().manual_seed(0)
    sd = {f'blocks.{i}.weight': torch.randn(n, generator=g) for i, n in enumerate([3, 5000, 70001, 1234567, 9])}
    torch.save(sd, tmp_path / 'prior_v1.pt')
    for dtype in (torch.bfloat16, torch.float16, None):
        out = read_part(tmp_path / 'prior_v1.pt', 'prior', dtype)
        assert all(torch.equal(out[k], v.to(dtype or v.dtype)) for k, v in sd.items())
    mapped, _ = read_state_dict(tmp_path / 'prior_v1.pt')        # memory-mapped while `mapped` lives
    ranges = _mapped_ranges(tmp_path / 'prior_v1.pt')
    assert ranges
    v = mapped['blocks.3.weight']
    _drop_pages(v, ranges)                                       # the file's pages: read again from the file
    assert torch.equal(v, sd['blocks.3.weight'])
    heap = torch.ones(100_000)                                   # not the file's memory: must never be dropped
    _drop_pages(heap, ranges)
    assert bool((heap == 1).all())


PEAK_SCRIPT = r'''
import sys, torch
from pathlib import Path
status = lambda key: int(Path('/proc/self/status').read_text().split(key + ':')[1].split()[0]) * 1024
from paella_nb.release import load_prior
load_prior(sys.argv[2], torch.bfloat16)                                     # warm up: the code's own memory is not the weights'
base = status('VmRSS')
m = load_prior(sys.argv[1], torch.bfloat16)
for v in m.state_dict().values(): v.reshape(-1)[::2048].float().sum()       # touch every page
held = sum(v.numel() * v.element_size() for v in m.state_dict().values())
print((status('VmHWM') - base) / held)
'''


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='reads the peak from /proc (Linux)')
def test_peak_memory_of_a_bf16_load_is_near_the_weights(tmp_path):
    "A 330 MB float32 prior loads into bfloat16 with a peak of at most 1.15x the 165 MB it then holds."
    import subprocess, sys
    with torch.device('meta'): m = PriorModel(clip_r=1024, c_hidden=1024, num_blocks=6)
    torch.save({k: torch.zeros(v.shape) for k, v in m.state_dict().items()}, tmp_path / 'prior_v1.pt')
    torch.save(PriorModel(**TINY).state_dict(), tmp_path / 'tiny.pt')
    out = subprocess.run([sys.executable, '-c', PEAK_SCRIPT, str(tmp_path / 'prior_v1.pt'), str(tmp_path / 'tiny.pt')], capture_output=True,
                         text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) <= 1.15
