"The wheel carries the package, the notebooks and the data, and `paella_nb course` works from it."
import os, subprocess, sys, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(out), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    whl, = out.glob('paella_nb-*.whl')
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    nbs = {Path(n).name for n in names if n.startswith('paella_nb/_course/nbs/') and n.endswith('.ipynb')}
    repo_nbs = {p.name for p in (ROOT/'nbs').glob('*.ipynb')}
    assert repo_nbs <= nbs, f'notebooks missing from the wheel: {repo_nbs - nbs}'
    assert 'paella_nb/_course/data/vqgan_f4_keys.txt' in names
    for model in ('shapes-small', 'emoji-small'):                   # the shipped pipelines (chapter 09)
        for f in ('pipeline.json', 'unet.safetensors', 'vqgan.safetensors', 'recipe.json'):
            assert f'paella_nb/_course/data/models/{model}/{f}' in names, (model, f)
    assert 'paella_nb/cli.py' in names and 'paella_nb/data.py' in names
    meta = [n for n in names if n.endswith('entry_points.txt')]
    assert meta and 'paella_nb = paella_nb.cli:main' in zipfile.ZipFile(wheel).read(meta[0]).decode()


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
    "The wheel installed into a folder of its own (without dependencies: they are the ones this interpreter has)."
    target = tmp_path_factory.mktemp('site')
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return target


def test_installed_wheel_course(installed, tmp_path):
    target = installed
    env = {**os.environ, 'PYTHONPATH': str(target)}
    code = ("import paella_nb, sys; from paella_nb.cli import main; print(paella_nb.__file__); "
            f"sys.exit(main(['course', {str(tmp_path/'c')!r}]))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(target) in r.stdout                                  # the installed copy, not the repository
    assert (tmp_path/'c'/'nbs'/'01_data.ipynb').exists() and (tmp_path/'c'/'data'/'vqgan_f4_keys.txt').exists()


def test_installed_wheel_samples_with_the_shipped_model(installed, tmp_path):
    "README command 1 from the installed wheel, away from the repository: the default model ships inside it."
    target = installed
    env = {**os.environ, 'PYTHONPATH': str(target), 'OMP_NUM_THREADS': '1'}
    code = ("import sys; from paella_nb.cli import main; from paella_nb.sampling import models_dir; print(models_dir()); "
            "sys.exit(main(['sample', 'a large red circle at the top left', '--out', 'out/red.png', '--seed', '0']))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(target) in r.stdout.splitlines()[0]                  # the installed copy's models, not the repository's
    assert (tmp_path/'out'/'red.png').stat().st_size > 100
