"The `paella_nb` console script."
import subprocess, sys
import pytest
from paella_nb.cli import main, copy_course


def run(*args):
    return subprocess.run([sys.executable, '-m', 'paella_nb.cli', *args], capture_output=True, text=True)


def test_help_and_unknown():
    assert main(['--help']) == 0
    assert main(['nonsense']) == 2


def test_console_script_entry(tmp_path):
    import shutil
    exe = shutil.which('paella_nb')
    if exe is None: pytest.skip('console script not on PATH (package not installed)')
    r = subprocess.run([exe, 'course', str(tmp_path/'c')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'c'/'nbs'/'index.ipynb').exists()


def test_course_copy_and_refusal(tmp_path, capsys):
    d = tmp_path/'course'
    assert main(['course', str(d)]) == 0
    nbs = sorted(p.name for p in (d/'nbs').glob('*.ipynb'))
    assert '01_data.ipynb' in nbs and 'index.ipynb' in nbs
    assert (d/'data'/'paella_v3_unet_keys.txt').exists()
    # non-empty folder: refuse without --force, naming the fix
    assert main(['course', str(d)]) == 1
    assert '--force' in capsys.readouterr().err
    # --force keeps an edited notebook as .bak and restores the original
    nb = d/'nbs'/'01_data.ipynb'; original = nb.read_text()
    nb.write_text(original.replace('Shapes', 'My edited Shapes'))
    assert main(['course', str(d), '--force']) == 0
    assert nb.read_text() == original
    assert 'My edited Shapes' in (d/'nbs'/'01_data.ipynb.bak').read_text()


def test_course_into_file_or_unwritable(tmp_path):
    f = tmp_path/'file.txt'; f.write_text('x')
    with pytest.raises(FileExistsError, match='not a folder'): copy_course(f)
    with pytest.raises(PermissionError): copy_course(f/'sub')
