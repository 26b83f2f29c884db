"Chapter 09: the judge, the data plumbing, a tiny recipe end to end, the shipped models and their bad input."
import json, os, subprocess, sys, warnings
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
import numpy as np
import pytest
import torch

from paella_nb.data import shapes_dataset, images_tensor, render_scene, to_tensor
from paella_nb.small_data import (IndexedRows, RecipeConfig, TINY_UNET, SHIPPED, judge_shapes, judge_pairs, read_shape,
                                  read_objects, caption_inputs, make_conditioner, train_recipe, ship, recipe_card,
                                  folder_mb, generate, eval_shapes, cached_tokens, encode_images, eval_diversity,
                                  step_readings)
from paella_nb.sampling import PaellaPipeline, available_models
from paella_nb.training import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- the judge ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('split', ['test', 'test_compositional'])
def test_judge_reads_real_images_perfectly(split):
    ds = shapes_dataset(120, split=split, seed=3)
    acc = judge_shapes(images_tensor(ds), ds)
    assert acc['all'] == acc['clean'] == 1.0, acc


def test_judge_pairs_on_real_scenes():
    ds = shapes_dataset(60, split='test', two_object_frac=1.0, seed=4)
    assert judge_pairs(images_tensor(ds), ds)['both'] == 1.0


def test_judge_is_not_fooled():
    obj = dict(color='red', shape='circle', size='large', position='center')
    x = to_tensor(render_scene([obj]))[0]
    assert read_shape(x)['color'] == 'red'
    blank = torch.ones(3, 32, 32)
    assert read_shape(blank)['color'] is None                            # an empty canvas reads as nothing
    mixed = x.clone(); mixed[:, :, 16:] = to_tensor(render_scene([{**obj, 'color': 'blue'}]))[0][:, :, 16:]
    assert read_shape(mixed)['purity'] < 0.8                              # a half-red, half-blue patchwork is not clean
    rows = dict(color=['blue'], shape=['circle'], size=['large'], position=['center'])
    assert judge_shapes(x[None], rows)['all'] == 0.0                      # wrong colour → not right
    assert len(read_objects(x)) >= 1
    with pytest.raises(ValueError, match=r'\[3, H, W\]'): read_shape(x[None])


# ---- data plumbing -------------------------------------------------------------------------------------------------
def test_indexed_rows():
    table = torch.arange(6.).view(3, 2)
    rows = IndexedRows(table, torch.tensor([2, 0, 0, 1]))
    assert len(rows) == 4 and rows.shape == (4, 2)
    assert torch.equal(rows[torch.tensor([0, 3])], torch.tensor([[4., 5.], [2., 3.]]))
    with pytest.raises(ValueError, match='outside the table'): IndexedRows(table, torch.tensor([3]))


def test_caption_inputs_encode_each_caption_once():
    cond = make_conditioner(RecipeConfig())
    caps = ['a red circle', 'a blue square', 'a red circle']
    c, u = caption_inputs(cond, caps)
    assert c['byt5'].table.shape[0] == 2 and len(c['byt5']) == 3
    assert torch.equal(c['byt5'][torch.tensor([0])], c['byt5'][torch.tensor([2])])
    assert u['byt5'].shape[0] == 1


def test_recipe_config_rejects_bad_values():
    with pytest.raises(ValueError, match='shapes'): RecipeConfig(data='mnist')
    with pytest.raises(ValueError, match='minilm'): RecipeConfig(text_encoder='t5')
    with pytest.raises(ValueError, match='two_object_frac'): RecipeConfig(two_object_frac=2)


# ---- the token cache: keyed by the images' content, verified ---------------------------------------------------------
@pytest.fixture
def token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('PAELLA_NB_CACHE', str(tmp_path))
    from paella_nb.data import cache_dir
    from paella_nb.vqgan import small_vqgan
    return cache_dir('tokens'), small_vqgan().eval()


def test_token_cache_is_keyed_by_content(token_cache):
    folder, vq = token_cache
    a = images_tensor(shapes_dataset(8, split='train', seed=0))
    b = images_tensor(shapes_dataset(8, split='train', seed=1))                     # same name, same count, other images
    ta, tb = cached_tokens(vq, a, 'same-name'), cached_tokens(vq, b, 'same-name')
    assert torch.equal(ta, encode_images(vq, a)) and torch.equal(tb, encode_images(vq, b))
    assert not torch.equal(ta, tb)
    assert len(list(folder.glob('same-name-*.safetensors'))) == 2
    assert torch.equal(cached_tokens(vq, a, 'same-name'), ta)                          # read back from the cache


@pytest.mark.parametrize('damage', ['truncate', 'tamper'])
def test_damaged_token_cache_is_rebuilt_with_a_warning(token_cache, damage):
    folder, vq = token_cache
    x = images_tensor(shapes_dataset(6, split='train', seed=2))
    want = cached_tokens(vq, x, 'dmg')
    (f,) = folder.glob('dmg-*.safetensors')
    if damage == 'truncate': f.write_bytes(f.read_bytes()[:100])
    else:                                                                            # valid file, wrong tokens
        from safetensors.torch import save_file
        from safetensors import safe_open
        with safe_open(str(f), 'pt') as h: meta = h.metadata()
        save_file({'tokens': (want + 1) % 1024}, str(f), metadata=meta)
    with pytest.warns(UserWarning, match=f'Token cache .*{f.name}.*rebuilding'):
        got = cached_tokens(vq, x, 'dmg')
    assert torch.equal(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert torch.equal(cached_tokens(vq, x, 'dmg'), want)                        # the rebuilt file is good


# ---- a tiny recipe end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_run():
    rc = RecipeConfig(n_images=300, two_object_frac=0.0, unet=dict(TINY_UNET),
                      train=TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=1, log_every=2, ckpt_every=0))
    return train_recipe(rc, cache=False)


def test_tiny_recipe_trains_saves_and_reloads(tiny_run, tmp_path):
    run = tiny_run
    assert run.result.step == 6 and np.isfinite(run.result.history['loss']).all()
    assert {'params', 'gflops_per_step', 'train_seconds', 'train_cpu_seconds'} <= set(run.info)
    path = ship(run, 'tiny-test', metrics={'x': 1}, root=tmp_path)
    assert (path / 'pipeline.json').exists() and recipe_card(path)['metrics'] == {'x': 1}
    with pytest.raises(FileExistsError, match='replace=True'): ship(run, 'tiny-test', root=tmp_path)   # never by accident
    assert recipe_card(path)['metrics'] == {'x': 1}
    ship(run, 'tiny-test', metrics={'x': 2}, root=tmp_path, replace=True)                               # on purpose
    assert recipe_card(path)['metrics'] == {'x': 2}
    pipe = PaellaPipeline.from_pretrained(path)
    a = generate(pipe, ['a large red circle in the center'] * 2, seed=0)
    b = generate(run.pipeline, ['a large red circle in the center'] * 2, seed=0)
    assert a.shape == (2, 3, 32, 32) and torch.allclose(a, b)


def test_byt5_joint_recipe_runs():
    rc = RecipeConfig(n_images=200, two_object_frac=0.0, text_encoder='byt5', unet=dict(TINY_UNET),
                      train=TrainConfig(steps=3, batch_size=8, warmup_steps=1, log_every=1, ckpt_every=0))
    run = train_recipe(rc, cache=False)
    before = run.pipeline.conditioner.text_encoder.model.shared.weight.clone()
    assert run.pipeline.conditioner.text_encoder.kind == 'byt5'
    assert generate(run.pipeline, ['a red circle'], steps=2).shape == (1, 3, 32, 32)
    fresh = make_conditioner(rc).text_encoder.model.shared.weight
    assert not torch.equal(before, fresh)                                   # the encoder was trained with the U-Net


# ---- the shipped models ------------------------------------------------------------------------------------------
def test_the_shipped_models_are_there():
    assert set(SHIPPED) <= set(available_models()), f'data/models holds only {available_models()}'


def test_shipped_models_load_by_name_and_are_small():
    total = 0
    for name in SHIPPED:
        pipe = PaellaPipeline.from_pretrained(name)
        assert pipe(['a large red circle in the center'], seed=0)[0].size == (32, 32)
        total += folder_mb(ROOT / 'data' / 'models' / name)
    assert total < 40, f'shipped models take {total:.1f} MB'


def test_shapes_small_follows_the_text():
    pipe = PaellaPipeline.from_pretrained('shapes-small')
    acc = eval_shapes(pipe, 'test', n=24, seed=5)
    assert acc['all'] >= 0.8, acc


def test_diversity_measures_variety():
    "The shipped model draws different pictures of one caption; a model that always draws the same one scores 0."
    pipe = PaellaPipeline.from_pretrained('shapes-small')
    d = eval_diversity(pipe, n=3, k=4)
    assert d['real'] > 0.03 and 0.2 < d['ratio'] < 2, d
    class Stuck:                                                        # every row the same picture
        config, vqgan = pipe.config, pipe.vqgan
        def __call__(self, prompts, seed=0, return_tokens=True, **kw):
            return pipe(prompts[:1], seed=0, return_tokens=True).expand(len(prompts), -1, -1)
    assert eval_diversity(Stuck(), n=3, k=4)['ratio'] == 0


def test_step_readings_one_reading_per_step_and_prompt():
    pipe = PaellaPipeline.from_pretrained('shapes-small')
    r = step_readings(pipe, ['a large red circle at the top left', 'a small blue square in the center'], seed=0, steps=4)
    assert len(r) == 4 and all(len(step) == 2 for step in r)
    assert (r[-1][0]['color'], r[-1][1]['color']) == ('red', 'blue')


def test_bad_input():
    with pytest.raises(FileNotFoundError, match='shapes-small'):
        PaellaPipeline.from_pretrained('no-such-model')                   # the message lists the shipped models
    pipe = PaellaPipeline.from_pretrained('shapes-small')
    with pytest.warns(UserWarning, match='truncated'):
        pipe(['a large red circle ' * 20], steps=2)
    assert len(pipe([''], steps=2)) == 1                                  # the empty prompt: the unconditional sample


def test_cli_writes_into_a_missing_folder(tmp_path):
    out = tmp_path / 'new' / 'dir' / 'red.png'
    r = subprocess.run([sys.executable, '-m', 'paella_nb.cli', 'sample', 'a large red circle at the top left',
                        '--out', str(out), '--seed', '0'],                 # README command 1: the default model
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.exists()
    red = to_tensor(__import__('PIL.Image', fromlist=['Image']).open(out))[0]
    assert read_shape(red)['color'] == 'red'                              # the default model drew what was asked


def test_cli_empty_prompt_says_it_is_unconditional(tmp_path, capsys):
    from paella_nb.cli import main
    assert main(['sample', '', '--out', str(tmp_path / 'u.png'), '--seed', '0', '--steps', '4']) == 0
    assert 'unconditional' in capsys.readouterr().out
    assert (tmp_path / 'u.png').exists()
