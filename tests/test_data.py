"Data sets: determinism, splits, caching and bad input (chapter 01)."
import os
import numpy as np
import pytest
from paella_nb.data import (shapes_dataset, emoji_dataset, shapes_sample, to_tensor, to_pil, images_tensor,
                            HELD_OUT_PAIRS, COLORS, data_path, cache_dir)


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


def test_caption_matches_pixels():
    s = shapes_sample(7, size=32)
    im = np.asarray(s['image'])
    x, y = {'left': 0.2, 'center': 0.5, 'right': 0.8}, {'top': 0.2, 'center': 0.5, 'bottom': 0.8}
    pos = s['position'].split()
    cx = x.get(pos[-1], 0.5) if pos[-1] in x else 0.5
    cy = y.get(pos[0], 0.5) if pos[0] in y else 0.5
    assert tuple(im[int(cy*32), int(cx*32)]) == COLORS[s['color']]
    assert s['caption'].startswith(f"a {s['size']} {s['color']} {s['shape']}")


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
