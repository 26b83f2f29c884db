"""Chapter 11 (paella_nb.shards): tar shards read in lanes.

- the data order is a function of the config, not of the number of processes or DataLoader workers;
- a stream restarted from saved lane states continues where it stopped;
- shard patterns, missing shards: clear errors; shards are written under our temporary names, then renamed;
- pre-encoded shards (toy encoders) hold tokens and CLIP embeddings; a folder that holds shards is refused.
"""
import json

import pytest
import torch

from paella_nb.shards import (RankStream, resolve_shards, prepare_shards, write_shards, iter_tar, TOY_ENCODERS)
from paella_nb.full_scale import tiny_config
from paella_nb.data import is_temp_name
import paella_nb.shards as shards_mod


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp('shards')/'shapes'
    prepare_shards('shapes:128:32', d, shard_size=8, image_size=32, progress=False)
    return d


def test_data_order_independent_of_world_size(shards):
    paths, man = resolve_shards(shards)
    assert len(paths) == 16 and man['samples'] == 128
    cfg = tiny_config(shards)
    one, two = RankStream(paths, cfg, 0, 1), [RankStream(paths, cfg, r, 2) for r in range(2)]
    for _ in range(20):                                                   # 160 samples: crosses an epoch
        a, b = one.next(), [s.next() for s in two]
        assert a['captions'] == b[0]['captions'] + b[1]['captions']
        assert torch.equal(a['image'], torch.cat([b[0]['image'], b[1]['image']]))
    assert {l: s['epoch'] for l, s in one.states.items()} == {0: 1, 1: 1}


def test_dataloader_workers_and_restart_position(shards):
    "Lanes read by 2 DataLoader worker processes give the same batches; a stream restarted from saved lane states continues."
    paths, _ = resolve_shards(shards)
    cfg = tiny_config(shards, data=dict(lanes=4, num_workers=2))
    ref, par = RankStream(paths, tiny_config(shards, data=dict(lanes=4)), 0, 1), RankStream(paths, cfg, 0, 1)
    for _ in range(5):
        a, b = ref.next(), par.next()
        assert a['captions'] == b['captions'] and torch.equal(a['image'], b['image'])
    saved = json.loads(json.dumps(par.states)); par.close()
    again = RankStream(paths, cfg, 0, 1, states=saved)
    for _ in range(3): assert again.next()['captions'] == ref.next()['captions']
    again.close(); ref.close()


def test_brace_patterns_and_missing_shards(shards, tmp_path):
    paths, _ = resolve_shards(str(shards/'shard-{000000..000003}.tar'))
    assert len(paths) == 4
    with pytest.raises(FileNotFoundError, match='2 of 6 shards are missing'):
        resolve_shards(str(shards/'shard-{000012..000017}.tar'))
    with pytest.raises(FileNotFoundError, match='data.shards is empty'): resolve_shards('')
    with pytest.raises(FileNotFoundError, match='no .tar shards'): resolve_shards(tmp_path)


def test_shards_are_written_under_temporary_names(tmp_path, monkeypatch):
    "Each shard is written to one of our temporary names (which remove_stale_temps recognises), then renamed."
    seen, real = [], shards_mod.write_tar
    monkeypatch.setattr(shards_mod, 'write_tar', lambda path, samples: (seen.append(path), real(path, samples))[1])
    out = write_shards(tmp_path, ((f'{i:03d}', {'txt': f'caption {i}'}) for i in range(5)), shard_size=2)
    assert [s['samples'] for s in out] == [2, 2, 1] and len(seen) == 3
    assert all(is_temp_name(p) for p in seen) and not any(is_temp_name(p) for p in tmp_path.iterdir())
    assert [k for k, _ in iter_tar(tmp_path/'shard-000002.tar')] == ['004']


def test_prepare_shards_preencoded(tmp_path):
    out = tmp_path/'pre'
    man = prepare_shards('shapes:24:32', out, shard_size=6, image_size=32, encode='toy', progress=False)
    assert man == json.loads((out/'shards.json').read_text())
    assert man['encoded'] == ['tokens', 'clip', 'clip_image'] and (out/'null_cond.safetensors').exists()
    cfg = tiny_config(out, tmp_path/'run', steps=2, ckpt_every=0)
    b = RankStream(resolve_shards(out)[0], cfg, 0, 1, preencoded=tuple(man['encoded'])).next()
    assert b['tokens'].shape == (8, 8, 8) and b['clip'].shape == (8, TOY_ENCODERS['clip_embd']) and 'image' not in b
    with pytest.raises(FileExistsError, match='already holds shards'): prepare_shards('shapes:4:32', out)   # never mix
    with pytest.raises(ValueError, match='unknown encode parts'):
        prepare_shards('shapes:4:32', tmp_path/'x', encode='toy', encode_parts='tokens,pixels')
