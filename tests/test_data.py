"Data sets: determinism, splits, caching and bad input (chapter 01)."
import os
import torch
import numpy as np
import pytest
from paella_nb.data import (shapes_dataset, emoji_dataset, shapes_sample, to_tensor, to_pil, images_tensor,
                            HELD_OUT_PAIRS, COLORS, SIZES, JITTER, jitter_object, data_path, cache_dir)


def test_shapes_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv('PAELLA_NB_CACHE', str(tmp_path))
    a = shapes_dataset(50, seed=3, two_object_frac=0.5)
    b = shapes_dataset(50, seed=3, two_object_frac=0.5)          # from the cache
    c = shapes_dataset(50, seed=3, two_object_frac=0.5, cache=False)
    assert list(a['caption']) == list(b['caption']) == list(c['caption'])
    assert np.array_equal(images_tensor(a).numpy(), images_tensor(c).numpy())
    assert any((tmp_path/'datasets').iterdir())
    assert list(shapes_dataset(50, seed=4, cache=False)['caption']) != list(c['caption'])


def test_splits_hold_out_pairs():
    tr = shapes_dataset(1500, two_object_frac=0.3, cache=False)
    pairs = set(zip(tr['color'], tr['shape'])) | {p for p in zip(tr['color2'], tr['shape2']) if p[0]}
    assert not pairs & set(HELD_OUT_PAIRS)
    comp = shapes_dataset(200, split='test_compositional', cache=False)
    assert set(zip(comp['color'], comp['shape'])) <= set(HELD_OUT_PAIRS)
    te = shapes_dataset(200, split='test', cache=False)
    assert not set(zip(te['color'], te['shape'])) & set(HELD_OUT_PAIRS)


@pytest.mark.parametrize('jitter', [False, True])
def test_caption_matches_pixels(jitter):
    "The canonical drawing has the exact palette colour at the shape's centre; a varied one is within the shade jitter."
    s = shapes_sample(7, size=32, jitter=jitter)
    im = np.asarray(s['image']).astype(int)
    x, y = {'left': 0.2, 'center': 0.5, 'right': 0.8}, {'top': 0.2, 'center': 0.5, 'bottom': 0.8}
    pos = s['position'].split()
    cx = x.get(pos[-1], 0.5) if pos[-1] in x else 0.5
    cy = y.get(pos[0], 0.5) if pos[0] in y else 0.5
    got, want = im[int(cy*32), int(cx*32)], np.array(COLORS[s['color']])
    assert np.abs(got - want).max() <= (JITTER['shade'] if jitter else 0)
    assert s['caption'].startswith(f"a {s['size']} {s['color']} {s['shape']}")


def test_jitter_keeps_captions_true():
    "Varied drawings: same captions as the canonical ones, different pixels, size classes apart, pairs never overlap."
    a, b = shapes_dataset(300, two_object_frac=0.3, cache=False), shapes_dataset(300, two_object_frac=0.3, jitter=False, cache=False)
    assert list(a['caption']) == list(b['caption'])
    xa, xb = images_tensor(a), images_tensor(b)
    assert (xa - xb).abs().flatten(1).max(1).values.gt(0).float().mean() > 0.9       # nearly every image differs
    rng = np.random.default_rng(0)
    o = dict(color='purple', shape='square', size='large', position='top left')
    drawn = [jitter_object(o, rng) for _ in range(500)]
    assert min(d['scale'] for d in drawn) * SIZES['large'] > max(SIZES['small'] * (1 + JITTER['size']), 0)
    assert all(abs(d['dx']) <= JITTER['position'] + 1e-9 and abs(d['dy']) <= JITTER['position'] + 1e-9 for d in drawn)
    pair = [jitter_object(dict(o, size='small', position='left'), rng, away=(-1, 0)) for _ in range(200)]
    assert all(d['dx'] <= 0 for d in pair)                                          # a 'left of' object never moves right
    assert shapes_sample(5, jitter=True)['image'].tobytes() == shapes_sample(5, jitter=True)['image'].tobytes()


@pytest.mark.parametrize('kw,msg', [(dict(n=0), 'positive'), (dict(n=10, size=12), 'multiple of 8'),
                                    (dict(n=10, size=36), 'multiple of 8'), (dict(n=10, split='val'), 'Unknown split'),
                                    (dict(n=-3), 'positive')])
def test_shapes_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg): shapes_dataset(**kw, cache=False)


def test_unwritable_cache(tmp_path, monkeypatch):
    ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500)
    monkeypatch.setenv('PAELLA_NB_CACHE', str(ro/'sub'))
    if os.geteuid() == 0:   # root can write anywhere: use a path below a file instead
        f = tmp_path/'afile'; f.write_text('x'); monkeypatch.setenv('PAELLA_NB_CACHE', str(f/'sub'))
    with pytest.raises(PermissionError, match='PAELLA_NB_CACHE'): cache_dir('datasets')
    with pytest.raises(PermissionError, match='PAELLA_NB_CACHE'): shapes_dataset(4)


def test_emoji():
    e = emoji_dataset(cache=False)
    assert len(e) > 1800 and e[0]['image'].size == (32, 32)
    te, tr = emoji_dataset(split='test', cache=False), emoji_dataset(split='train', cache=False)
    assert len(te) + len(tr) == len(e) and not set(te['caption']) & set(tr['caption'])
    with pytest.raises(ValueError, match='styles'): emoji_dataset(styles=('comic',), cache=False)


def test_tensor_helpers():
    x = to_tensor(shapes_dataset(3, cache=False)['image'])
    assert x.shape == (3, 3, 32, 32) and x.dtype.is_floating_point and 0 <= x.min() <= x.max() <= 1
    assert len(to_pil(x)) == 3
    with pytest.raises(ValueError, match='empty'): to_tensor([])
    with pytest.raises(FileNotFoundError, match='reinstall'): data_path('no_such_file.bin')


# ------------------------------------------------------------------ verified cache (a changed file is rebuilt)
def _cache_folder(tmp_path):
    (d,) = (tmp_path/'datasets').iterdir()
    return d


def test_edited_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv('PAELLA_NB_CACHE', str(tmp_path))
    good = list(shapes_dataset(20, seed=5)['caption'])
    d = _cache_folder(tmp_path)
    (arrow,) = d.glob('*.arrow')
    data, cap = arrow.read_bytes(), good[0].encode()
    assert data.count(cap) >= 1
    arrow.write_bytes(data.replace(cap, b'A' + cap[1:], 1))                  # same length: Arrow still reads it
    with pytest.warns(UserWarning, match=r'shapes-.*data-00000-of-00001\.arrow does not match its checksum'):
        again = list(shapes_dataset(20, seed=5)['caption'])
    assert again == good and [p.name for p in (tmp_path/'datasets').iterdir()] == [d.name]
    import warnings
    with warnings.catch_warnings(): warnings.simplefilter('error'); shapes_dataset(20, seed=5)   # verified: silent


def test_cache_without_checksums_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv('PAELLA_NB_CACHE', str(tmp_path))
    shapes_dataset(8, seed=1)
    d = _cache_folder(tmp_path)
    (d/'paella_nb_checksums.json').unlink()
    with pytest.warns(UserWarning, match='paella_nb_checksums.json'): shapes_dataset(8, seed=1)
    assert (d/'paella_nb_checksums.json').exists()


# ------------------------------------------------------------------ the shared tools: files, grids, switches
from paella_nb.data import (atomic_write, atomic_dir, remove_stale_temps, is_temp_name, TEMP_PREFIX, image_grid,
                            progress, run_slow)


def test_atomic_write_leaves_old_file_or_new(tmp_path):
    f = atomic_write(tmp_path/'sub'/'a.txt', lambda tmp: tmp.write_text('old'))
    def dies(tmp): tmp.write_text('half'); raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): atomic_write(f, dies)
    assert f.read_text() == 'old' and os.listdir(f.parent) == ['a.txt']
    seen = []
    atomic_write(f, lambda tmp: (seen.append(tmp.name), tmp.write_text('new')))
    assert f.read_text() == 'new' and is_temp_name(seen[0]) and seen[0].startswith(TEMP_PREFIX)


def test_atomic_dir_replaces_or_keeps(tmp_path):
    target = tmp_path/'model'
    with atomic_dir(target) as tmp: (tmp/'w').write_text('1')
    with atomic_dir(target) as tmp: (tmp/'w').write_text('2'); (tmp/'extra').write_text('x')
    assert sorted(os.listdir(target)) == ['extra', 'w'] and (target/'w').read_text() == '2'
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp: (tmp/'w').write_text('3'); raise RuntimeError('crash')
    assert (target/'w').read_text() == '2' and os.listdir(tmp_path) == ['model']


def test_remove_stale_temps_only_ours(tmp_path):
    ours = tmp_path/f'{TEMP_PREFIX}new-123-0123abcd-ckpt.safetensors'; ours.write_text('left by kill -9')
    ours_dir = tmp_path/f'{TEMP_PREFIX}new-123-89abcdef-pipeline'; ours_dir.mkdir(); (ours_dir/'x').write_text('x')
    moved = tmp_path/f'{TEMP_PREFIX}old-123-00000000-pipe2'; moved.mkdir(); (moved/'w').write_text('only copy')
    keep = [tmp_path/'.ckpt.safetensors.tmp123', tmp_path/'notes.tmp', tmp_path/'ckpt.safetensors']
    for p in keep: p.write_text('not ours')
    assert remove_stale_temps(tmp_path) == []                                 # all young: a save may be running
    removed = remove_stale_temps(tmp_path, older_than_s=0)
    assert sorted(p.name for p in removed) == sorted([ours.name, ours_dir.name, moved.name])
    assert all(p.exists() for p in keep) and (tmp_path/'pipe2'/'w').read_text() == 'only copy'   # restored
    assert not is_temp_name('ckpt.safetensors') and not is_temp_name('.x.tmp1')


def test_image_grid_and_switches(monkeypatch):
    x = torch.rand(10, 3, 8, 6)
    assert image_grid(x).size == (8 * 6, 2 * 8) and image_grid(to_pil(x[:3]), ncols=1, scale=2).size == (12, 48)
    with pytest.raises(ValueError, match='no images'): image_grid([])
    monkeypatch.delenv('IN_TEST', raising=False)
    assert run_slow(False) is False and run_slow(True) is True
    monkeypatch.setenv('IN_TEST', '1'); assert run_slow(False) is True
    bar = progress(total=3, disable=True); bar.update(3); bar.close()
    assert list(progress([1, 2], desc='x', disable=True)) == [1, 2]
