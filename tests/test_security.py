"""Pipeline folders are data, and `paella_nb sample` refuses bad input before any work.

Each payload below is one a downloaded model folder could carry. The tests prove that loading it runs no code (the
marker file a pickle would write never appears) and that the error names the file (and the key) to look at."""
import json, os, pickle, shutil, subprocess, sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pytest
import torch

import paella_nb.sampling as S
from paella_nb.cli import main
from paella_nb.conditioning import ByT5Encoder, Conditioner
from paella_nb.sampling import PaellaPipeline
from paella_nb.unet import Paella, PAELLA_TINY
from paella_nb.vqgan import VQModel


class Payload:
    "Unpickling this writes `marker`: what a hostile `.pt` file does (any code could run instead)."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    torch.manual_seed(0)
    unet = Paella(**{**asdict(PAELLA_TINY), 'num_labels': 64}).eval()
    vq = VQModel(levels=2, bottleneck_blocks=1, c_hidden=32, codebook_size=64).eval()
    cond = Conditioner(ByT5Encoder.tiny(d_model=PAELLA_TINY.byt5_embd)).eval()
    return PaellaPipeline(unet, vq, cond, latent_size=8, cfg=2.0, steps=3).save_pretrained(tmp_path_factory.mktemp('p') / 'pipe')


@pytest.fixture
def folder(saved, tmp_path):
    "A fresh copy of a good pipeline folder, and the marker file a payload would write."
    f = tmp_path / 'downloaded'
    shutil.copytree(saved, f)
    return f, tmp_path / 'MARKER'


def edit_json(file, **changes):
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def refused(f, marker, match, err=ValueError):
    with pytest.raises(err, match=match):
        PaellaPipeline.from_pretrained(f)
    assert not marker.exists(), "the payload ran"


def test_payload_really_runs_code_when_unpickled(tmp_path):
    "The payload is real: plain pickle.loads (what torch.load(weights_only=False) does) writes the marker."
    marker = tmp_path / 'M'
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_good_folder_loads(folder):
    f, marker = folder
    assert PaellaPipeline.from_pretrained(f).config['steps'] == 3


@pytest.mark.parametrize('key, value', [('pretrained', 'evil.pt'), ('weights_only', False), ('device', 'cuda')])
def test_pipeline_json_unknown_keys(folder, key, value):
    f, marker = folder
    edit_json(f / 'pipeline.json', **{key: value})
    refused(f, marker, rf"pipeline\.json: key '{key}' is not allowed")


@pytest.mark.parametrize('key, value', [('steps', '12'), ('latent_size', [8]), ('cfg', 'high'), ('temperature', [1, 2, 3]),
                                        ('negative_prompt', 5)])
def test_pipeline_json_wrong_types(folder, key, value):
    f, marker = folder
    edit_json(f / 'pipeline.json', **{key: value})
    refused(f, marker, rf"pipeline\.json: key '{key}' must be")


@pytest.mark.parametrize('text', ['{"format": ', '', '\xff\xfe', '[1, 2]'])
def test_pipeline_json_invalid(folder, text):
    f, marker = folder
    (f / 'pipeline.json').write_bytes(text.encode('latin-1'))
    refused(f, marker, r'pipeline\.json')


def plant_clip(f, payload_name, source):
    "A conditioner that asks for a CLIP encoder whose source points at a planted pickle."
    edit_json(f / 'conditioner' / 'conditioner.json', clip={'type': 'open_clip'})
    (f / 'conditioner' / 'clip').mkdir(exist_ok=True)
    (f / 'conditioner' / 'clip' / 'clip_source.json').write_text(json.dumps(source))
    return f / 'conditioner' / 'clip' / payload_name


@pytest.mark.parametrize('name', ['evil.pt', 'evil.bin', 'weights'])   # by suffix, and by content without one
def test_pickle_in_folder_is_refused(folder, name):
    f, marker = folder
    p = plant_clip(f, name, {'model_name': 'ViT-B-32', 'pretrained': name, 'weights_only': False})
    p.write_bytes(pickle.dumps(Payload(marker)))
    refused(f, marker, 'pickle')


def test_torch_zip_pickle_is_refused(folder):
    f, marker = folder
    p = plant_clip(f, 'model', {'model_name': 'ViT-B-32', 'pretrained': 'model'})
    torch.save(Payload(marker), p)
    refused(f, marker, 'pickle')


def test_json_path_outside_folder(folder, tmp_path):
    f, marker = folder
    outside = tmp_path / 'evil.pt'; outside.write_bytes(pickle.dumps(Payload(marker)))
    plant_clip(f, 'unused', {'model_name': 'ViT-B-32', 'pretrained': str(outside), 'weights_only': False})
    refused(f, marker, r"clip_source\.json")


@pytest.mark.parametrize('value', ['../../x', '~/x', '/etc/passwd', 'sub/../../x'])
def test_text_encoder_path_outside_folder(tmp_path, value):
    "The shipped model's MiniLM text encoder: its `path` may not lead anywhere (the weights ship in the package)."
    f, marker = tmp_path / 'shipped', tmp_path / 'MARKER'
    shutil.copytree(S.models_dir() / 'shapes-small', f)
    edit_json(f / 'conditioner' / 'text_encoder' / 'text_encoder.json', path=value)
    refused(f, marker, r"text_encoder\.json")


@pytest.mark.parametrize('value', ['../../x', '/etc', 'sub/../../x'])
def test_byt5_source_outside_folder(folder, value):
    "A ByT5 folder without its own weights may name a hub model, not a folder outside the pipeline."
    f, marker = folder
    (f / 'conditioner' / 'text_encoder' / 'config.json').unlink()
    edit_json(f / 'conditioner' / 'text_encoder' / 'text_encoder.json', source=value)
    refused(f, marker, r"text_encoder")


def test_symlink_out_of_folder(folder, tmp_path):
    f, marker = folder
    target = tmp_path / 'elsewhere.safetensors'
    shutil.copy(f / 'unet.safetensors', target)
    (f / 'unet.safetensors').unlink(); (f / 'unet.safetensors').symlink_to(target)
    refused(f, marker, r'unet\.safetensors is a link to .* outside the pipeline folder')


def test_symlink_inside_folder_is_fine(folder):
    f, _ = folder
    (f / 'copy.safetensors').symlink_to(f / 'unet.safetensors')
    assert PaellaPipeline.from_pretrained(f).config['steps'] == 3


@pytest.mark.parametrize('cut', [0, 7, 100, -1000])
def test_truncated_or_empty_weights_name_the_file(folder, cut):
    f, marker = folder
    w = f / 'unet.safetensors'
    w.write_bytes(w.read_bytes()[:cut])
    refused(f, marker, r'unet\.safetensors')


def test_save_pretrained_is_atomic_and_leaves_no_temp(saved, tmp_path, monkeypatch):
    pipe = PaellaPipeline.from_pretrained(saved)
    dest = pipe.save_pretrained(tmp_path / 'p')
    before = sorted(p.name for p in dest.rglob('*'))
    import paella_nb.unet as U
    monkeypatch.setattr(U, 'save_paella', lambda *a, **k: (_ for _ in ()).throw(OSError('disk full')))
    with pytest.raises(OSError, match='disk full'): pipe.save_pretrained(dest)
    assert sorted(p.name for p in dest.rglob('*')) == before                  # the old pipeline is intact
    assert [p.name for p in tmp_path.iterdir()] == ['p']                       # and no temp folder is left


# ---- the command line: every bad argument is refused before any work ------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    "Fail loudly if the CLI gets as far as loading a model."
    calls = []
    monkeypatch.setattr(S.PaellaPipeline, 'from_pretrained', classmethod(lambda cls, *a, **k: calls.append(a) or 1 / 0))
    return calls


@pytest.mark.parametrize('args, msg', [
    (['--cfg', 'nan'], 'cfg must be a finite number'),
    (['--cfg', 'inf'], 'cfg must be a finite number'),
    (['--cfg', '1', 'inf'], 'cfg must be a finite number'),
    (['--temperature', '1e-38'], 'smallest sensible value is 0.0001'),
    (['--temperature', 'nan'], 'temperature must be a finite'),
    (['--device', 'nonsense'], "unknown device 'nonsense'"),
    (['--device', 'meta'], "device 'meta' holds no data"),
    (['--seed', str(2**70)], r'seed must be an int in \[0, 2\*\*64 - 1\]'),
    (['--steps', '0'], 'steps must be'),
])
def test_cli_refuses_before_any_work(args, msg, no_work, tmp_path, capsys):
    assert main(['sample', 'a red circle', '--out', str(tmp_path / 'a.png'), *args]) == 1
    err = capsys.readouterr().err
    assert 'paella_nb sample: error:' in err and __import__('re').search(msg, err), err
    assert no_work == [] and not any(tmp_path.iterdir())


def test_cli_cuda_without_gpu(no_work, tmp_path, capsys):
    if torch.cuda.is_available(): pytest.skip('this machine has a GPU')
    assert main(['sample', 'x', '--out', str(tmp_path / 'a.png'), '--device', 'cuda']) == 1
    assert 'no CUDA GPU' in capsys.readouterr().err and no_work == []


def test_cli_out_under_a_file_names_the_file(no_work, tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(SystemExit) as e:
        main(['sample', 'x', '--out', str(tmp_path / 'notes.txt' / 'sub' / 'a.png')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{tmp_path / 'notes.txt'} is a file, not a folder" in err and '.paella-tmp' not in err
    assert no_work == []


@pytest.mark.parametrize('damage, match', [
    (lambda f: (f / 'unet.safetensors').write_bytes(b''), r'unet\.safetensors'),
    (lambda f: (f / 'unet.safetensors').write_bytes((f / 'unet.safetensors').read_bytes()[:5000]), r'unet\.safetensors'),
    (lambda f: (f / 'pipeline.json').write_text('{"format": "paella_nb.pipeline/1",'), r'pipeline\.json'),
])
def test_cli_damaged_folder_names_the_file(folder, damage, match, capsys):
    f, marker = folder
    damage(f)
    assert main(['sample', 'x', '--model', str(f), '--out', str(f.parent / 'a.png')]) == 1
    assert __import__('re').search(match, capsys.readouterr().err)
    assert not (f.parent / 'a.png').exists()


def test_cli_payload_folder_runs_no_code(folder, capsys):
    f, marker = folder
    p = plant_clip(f, 'evil.pt', {'model_name': 'ViT-B-32', 'pretrained': 'evil.pt', 'weights_only': False})
    p.write_bytes(pickle.dumps(Payload(marker)))
    assert main(['sample', 'x', '--model', str(f), '--out', str(f.parent / 'a.png')]) == 1
    assert 'pickle' in capsys.readouterr().err and not marker.exists()


def test_cli_many_images_in_batches(saved, tmp_path, capsys):
    out = tmp_path / 'many' / 'x.png'
    assert main(['sample', 'a red circle', '--model', str(saved), '--out', str(out), '--n', '5', '--batch-size', '2',
                 '--seed', '1']) == 0
    files = sorted(p.name for p in out.parent.iterdir())
    assert files == [f'x-{i}.png' for i in range(5)]
    first = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert main(['sample', 'a red circle', '--model', str(saved), '--out', str(out), '--n', '5', '--batch-size', '2',
                 '--seed', '1']) == 0
    assert first == {p.name: p.read_bytes() for p in out.parent.iterdir()}   # batched runs are reproducible too
    assert '... and 2 more' in capsys.readouterr().out


def test_cli_refuses_what_cannot_fit(saved, tmp_path, capsys, monkeypatch):
    import collections
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: collections.namedtuple('u', 'total used free')(10**9, 10**9, 10**6))
    assert main(['sample', 'x', '--model', str(saved), '--out', str(tmp_path / 'x.png'), '--n', '100000']) == 1
    err = capsys.readouterr().err
    assert '--n 100000 would write about 0.3 GB' in err and 'fewer images' in err
    assert list(tmp_path.iterdir()) == []


def test_batches_shrink_to_fit_memory_and_refuse_only_what_cannot(saved, tmp_path, monkeypatch):
    pipe = PaellaPipeline.from_pretrained(saved)
    per_image = 6 * 64 * 8 * 8 * 4
    monkeypatch.setattr(S, '_free_memory', lambda device: 2 * per_image * 3)     # room for 3 images at a time
    assert S._fit_batch_size(pipe, 64) == 3 and S._fit_batch_size(pipe, 2) == 2
    files = S.sample_to_files(pipe, 'a red circle', tmp_path / 'x.png', n=7, seed=0, batch_size=64)
    assert len(files) == 7 and all(f.exists() for f in files)
    monkeypatch.setattr(S, '_free_memory', lambda device: per_image)              # not even one image fits
    with pytest.raises(ValueError, match='one image .* needs about .* GB to sample'):
        S.sample_to_files(pipe, 'a red circle', tmp_path / 'y.png', n=2, seed=0)
    assert not (tmp_path / 'y-0.png').exists()
    monkeypatch.setattr(S, '_free_memory', lambda device: None)                   # unknown: trust the batch size
    assert S._fit_batch_size(pipe, 64) == 64
