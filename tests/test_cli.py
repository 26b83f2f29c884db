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
    # --force keeps an edited notebook as .bak1 and restores the original; a second --force keeps the second edit
    # as .bak2 (the first is never overwritten), and the command lists what it kept
    nb = d/'nbs'/'01_data.ipynb'; original = nb.read_text()
    nb.write_text(original.replace('Shapes', 'My edited Shapes'))
    assert main(['course', str(d), '--force']) == 0
    assert nb.read_text() == original
    assert 'My edited Shapes' in (d/'nbs'/'01_data.ipynb.bak1').read_text()
    nb.write_text(original.replace('Shapes', 'Second edit of Shapes'))
    assert main(['course', str(d), '--force']) == 0
    out = capsys.readouterr().out
    assert 'My edited Shapes' in (d/'nbs'/'01_data.ipynb.bak1').read_text()
    assert 'Second edit of Shapes' in (d/'nbs'/'01_data.ipynb.bak2').read_text()
    assert str(d/'nbs'/'01_data.ipynb.bak2') in out and 'Kept 1 edited' in out
    assert main(['course', str(d), '--force']) == 0                # nothing edited: no new backup
    assert not (d/'nbs'/'01_data.ipynb.bak3').exists()


def test_course_into_file_or_unwritable(tmp_path):
    f = tmp_path/'file.txt'; f.write_text('x')
    with pytest.raises(FileExistsError, match='not a folder'): copy_course(f)
    with pytest.raises(PermissionError): copy_course(f/'sub')


def test_next_command_works_as_printed(tmp_path, capsys, monkeypatch):
    "`course` prints a next command that works: with JupyterLab missing, the pip install that brings it comes first."
    import importlib.util, paella_nb.cli as C
    assert main(['course', str(tmp_path/'a')]) == 0
    line = capsys.readouterr().out.split('Next: ', 1)[1]
    if importlib.util.find_spec('jupyterlab') is None: assert line.startswith('pip install "paella_nb[course]"')
    else: assert line.startswith('jupyter lab ')
    real = importlib.util.find_spec
    monkeypatch.setattr(C.importlib.util, 'find_spec', lambda name, *a: None if name == 'jupyterlab' else real(name, *a))
    assert C.next_command(tmp_path).startswith('pip install "paella_nb[course]"')


def test_help_is_instant_and_imports_no_torch():
    "`paella_nb --help` imports neither torch nor any chapter module."
    code = "import sys; from paella_nb.cli import main; main(['--help']); print(sorted(m for m in sys.modules if m.startswith(('torch', 'paella_nb.'))))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "['paella_nb.cli']", r.stdout + r.stderr
    for cmd in ('course', 'sample', 'train-full', 'prepare-shards', 'grade'): assert cmd in r.stdout


@pytest.mark.parametrize('cmd', ['sample', 'train-full', 'prepare-shards', 'grade', 'course'])
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e: main([cmd, '--help'])
    assert e.value.code == 0 and f'paella_nb {cmd}' in capsys.readouterr().out


def test_grade_parses_and_reports(tmp_path, capsys):
    "`paella_nb grade` is a thin call into classroom.grade: an empty folder has nothing to grade, a missing one is named."
    (tmp_path / 'empty').mkdir()
    assert main(['grade', str(tmp_path / 'empty'), '--sandbox', 'process', '--memory-gb', '6']) == 1
    assert 'no files found' in capsys.readouterr().out
    assert main(['grade', str(tmp_path / 'missing')]) == 1
    assert 'is not a folder' in capsys.readouterr().err


def test_convert(tmp_path):
    "`paella_nb convert SRC DST` (chapter 14's `convert`): a .pt state dict becomes safetensors; a missing file is exit 1."
    import torch
    from paella_nb.cli import main
    torch.save({'w': torch.ones(2)}, tmp_path / 'a.pt')
    assert main(['convert', str(tmp_path / 'a.pt'), str(tmp_path / 'a.safetensors')]) == 0
    assert (tmp_path / 'a.safetensors').exists()
    assert main(['convert', str(tmp_path / 'missing.pt'), str(tmp_path / 'b.safetensors')]) == 1


def test_sample_command_imports_only_what_it_needs(tmp_path):
    "A one-picture `paella_nb sample` on the shipped model imports neither transformers nor torch._dynamo."
    import subprocess, sys
    from paella_nb.sampling import available_models
    if 'shapes-small' not in available_models(): pytest.skip('shapes-small is not shipped in this copy')
    code = ("import sys; from paella_nb.cli import main; main(['sample', 'a red circle', '--out', %r, '--seed', '0']); "
            "print(sorted(m for m in ('transformers', 'torch._dynamo', 'matplotlib', 'open_clip', 'datasets', "
            "'sentence_transformers') if m in sys.modules))" % str(tmp_path / 'x.png'))
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert run.stdout.strip().splitlines()[-1] == '[]', run.stdout + run.stderr
    assert 'Loading weights' not in run.stderr and (tmp_path / 'x.png').exists()
