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
    for cmd in ('course', 'sample', 'edit', 'train-full', 'prepare-shards', 'grade'): assert cmd in r.stdout


@pytest.mark.parametrize('cmd', ['sample', 'edit', 'train-full', 'prepare-shards', 'grade', 'course'])
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


# ---- `paella_nb edit`: chapter 10's editing on picture files ----------------------------------------------------

def _models():
    from paella_nb.sampling import available_models
    return available_models()

needs_small = pytest.mark.skipif('shapes-small' not in _models(), reason='shapes-small is not shipped in this copy')
needs_clip = pytest.mark.skipif('shapes-clip' not in _models(), reason='shapes-clip is not shipped in this copy')


@pytest.fixture(scope='module')
def edit_files(tmp_path_factory):
    "A 32×32 RGB source (a large red square), a binary mask of its middle, and broken inputs, in one folder."
    from PIL import Image
    from paella_nb.data import render_scene
    d = tmp_path_factory.mktemp('edit')
    src = render_scene([dict(color='red', shape='square', size='large', position='center')])
    src.save(d / 'src.png')
    mask = Image.new('L', (32, 32), 0); mask.paste(255, (8, 8, 24, 24)); mask.save(d / 'mask.png')
    Image.new('L', (32, 32), 0).save(d / 'black.png')
    Image.new('L', (32, 32), 128).save(d / 'grey.png')
    Image.new('L', (16, 16), 255).save(d / 'small_mask.png')
    src.resize((64, 64)).save(d / 'big.png')
    src.convert('RGBA').save(d / 'rgba.png'); src.convert('P').save(d / 'pal.png'); src.convert('L').save(d / 'gray.png')
    src.save(d / 'src.gif')
    (d / 'text.png').write_text('not a picture')
    return d


def _edit(capsys, *args):
    "Run `paella_nb edit ARGS` in this process: (exit code, stdout, stderr)."
    code = main(['edit', *map(str, args), '--steps', '4'])
    out = capsys.readouterr()
    return code, out.out, out.err


def _pixels(f):
    import numpy as np
    from PIL import Image
    with Image.open(f) as im: return im.size, np.asarray(im.convert('RGB'))


def test_edit_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e: main(['edit', '--help'])
    out = capsys.readouterr().out
    assert e.value.code == 0 and 'paella_nb edit' in out
    for cmd in ('inpaint', 'outpaint', 'restyle', 'variations'): assert cmd in out
    with pytest.raises(SystemExit) as e: main(['edit'])                        # no subcommand: argparse's usage error
    assert e.value.code == 2 and 'inpaint' in capsys.readouterr().err


@needs_small
def test_edit_inpaint_outpaint_restyle(edit_files, tmp_path, capsys):
    "Each command end to end on the shipped model: the output has the right size; `-n 2` names files as `sample` does."
    d = edit_files
    code, out, err = _edit(capsys, 'inpaint', d / 'src.png', '--mask', d / 'mask.png', '--prompt', 'a large blue circle in the center',
                           '--out', tmp_path / 'in.png', '--seed', 0)
    assert code == 0, err
    assert _pixels(tmp_path / 'in.png')[0] == (32, 32) and 'repainting 16 of 64 tokens' in out and 'seed 0' in out
    code, out, err = _edit(capsys, 'inpaint', d / 'src.png', '--box', '8,8,16,16', '--prompt', 'a blue circle',
                           '--out', tmp_path / 'box.png', '--seed', 0, '-n', 2)
    assert code == 0, err
    assert [_pixels(tmp_path / f'box-{i}.png')[0] for i in (0, 1)] == [(32, 32)] * 2 and not (tmp_path / 'box.png').exists()
    code, out, err = _edit(capsys, 'outpaint', d / 'src.png', '--prompt', 'a red square left of a blue circle',
                           '--grow', 'right=32', '--out', tmp_path / 'wide.png')
    assert code == 0, err
    assert _pixels(tmp_path / 'wide.png')[0] == (64, 32)
    code, out, err = _edit(capsys, 'outpaint', d / 'src.png', '--prompt', 'a red square', '--grow', 'right=32,bottom=32',
                           '--out', tmp_path / 'sub' / 'big.png')
    assert code == 0, err
    assert _pixels(tmp_path / 'sub' / 'big.png')[0] == (64, 64) and 'created folder' in out
    code, out, err = _edit(capsys, 'restyle', d / 'src.png', '--prompt', 'a large blue square in the center',
                           '--strength', 0.5, '--out', tmp_path / 'blue.jpg')
    assert code == 0, err
    assert _pixels(tmp_path / 'blue.jpg')[0] == (32, 32)


@needs_small
def test_edit_mask_formats(edit_files, tmp_path, capsys):
    "A black-and-white mask works as a 1-bit BMP and as an RGB PNG; white is what gets repainted."
    from PIL import Image
    m = Image.open(edit_files / 'mask.png')
    m.convert('1').save(tmp_path / 'm1.bmp'); m.convert('RGB').save(tmp_path / 'mrgb.png')
    for i, mask in enumerate(('m1.bmp', 'mrgb.png')):
        code, out, err = _edit(capsys, 'inpaint', edit_files / 'src.png', '--mask', tmp_path / mask, '--prompt', 'a blue circle',
                               '--out', tmp_path / f'o{i}.png', '--seed', 0)
        assert code == 0 and 'repainting 16 of 64 tokens' in out, err


@needs_small
def test_edit_seed_reproducible_and_alias(edit_files, tmp_path, capsys):
    "`--seed` gives the same pictures again; `edit` is an alias of `restyle`."
    d, args = edit_files, ('--prompt', 'a large green square in the center', '--strength', '0.6', '--seed', 7, '-n', 2)
    assert _edit(capsys, 'restyle', d / 'src.png', *args, '--out', tmp_path / 'a.png')[0] == 0
    assert _edit(capsys, 'edit', d / 'src.png', *args, '--out', tmp_path / 'b.png')[0] == 0
    for i in (0, 1): assert (_pixels(tmp_path / f'a-{i}.png')[1] == _pixels(tmp_path / f'b-{i}.png')[1]).all()
    args = ('--mask', d / 'mask.png', '--prompt', 'a blue circle', '--seed', 3)
    assert _edit(capsys, 'inpaint', d / 'src.png', *args, '--out', tmp_path / 'c.png')[0] == 0
    assert _edit(capsys, 'inpaint', d / 'src.png', *args, '--out', tmp_path / 'd.png')[0] == 0
    assert (_pixels(tmp_path / 'c.png')[1] == _pixels(tmp_path / 'd.png')[1]).all()


@needs_small
def test_edit_never_overwrites_without_flag(edit_files, tmp_path, capsys):
    d, out = edit_files, tmp_path / 'x.png'
    args = ('restyle', d / 'src.png', '--prompt', 'a blue square', '--out', out, '--seed', 1)
    out.write_bytes(b'keep me')
    code, _, err = _edit(capsys, *args)
    assert code == 2 and '--overwrite' in err and out.read_bytes() == b'keep me'
    (tmp_path / 'y-1.png').write_bytes(b'keep me too')                        # one of several outputs is enough to refuse
    code, _, err = _edit(capsys, 'variations', d / 'src.png', '-n', 2, '--out', tmp_path / 'y.png')
    assert code == 2 and 'y-1.png exists' in err and not (tmp_path / 'y-0.png').exists()
    assert _edit(capsys, *args, '--overwrite')[0] == 0 and _pixels(out)[0] == (32, 32)


@needs_clip
def test_edit_variations(edit_files, tmp_path, capsys):
    "variations: the CLIP model is the default; `-n 2` writes two 32×32 pictures."
    code, out, err = _edit(capsys, 'variations', edit_files / 'src.png', '-n', 2, '--seed', 0, '--out', tmp_path / 'v.png')
    assert code == 0, err
    assert [_pixels(tmp_path / f'v-{i}.png')[0] for i in (0, 1)] == [(32, 32)] * 2


BAD_EDITS = [   # (arguments after SOURCE-command, what stderr must say)
    (['restyle', '{d}/missing.png'], 'does not exist'),
    (['restyle', '{d}/text.png'], 'is not a picture PIL can read'),
    (['restyle', '{d}/src.gif'], 'is not a picture file: give a .png'),
    (['restyle', '{d}'], 'is a folder'),
    (['restyle', '{d}/big.png'], 'is 64×64 pixels but this model draws 32×32: resize it first'),
    (['restyle', '{d}/rgba.png'], "in mode RGBA (with transparency), but the model reads RGB pictures: convert it first"),
    (['restyle', '{d}/pal.png'], "in mode P, but the model reads RGB pictures: convert it first"),
    (['restyle', '{d}/gray.png'], "in mode L, but the model reads RGB pictures: convert it first"),
    (['restyle', '{d}/src.png', '--strength', '0'], '--strength 0 is outside (0, 1]'),
    (['restyle', '{d}/src.png', '--strength', '1.5'], '--strength 1.5 is outside (0, 1]'),
    (['restyle', '{d}/src.png', '--strength', 'nan'], 'is outside (0, 1]'),
    (['inpaint', '{d}/src.png', '--mask', '{d}/grey.png'], 'is not black and white (its grey levels: 128)'),
    (['inpaint', '{d}/src.png', '--mask', '{d}/black.png'], 'is all black, so there is nothing to repaint'),
    (['inpaint', '{d}/src.png', '--mask', '{d}/small_mask.png'], 'is 16×16 pixels but SOURCE is 32×32'),
    (['inpaint', '{d}/src.png', '--mask', '{d}/rgba.png'], 'is in mode RGBA: save it as a black-and-white PNG'),
    (['inpaint', '{d}/src.png', '--mask', '{d}/missing.png'], "--mask '{d}/missing.png' does not exist"),
    (['inpaint', '{d}/src.png', '--box', '8,8,16'], 'give TOP,LEFT,HEIGHT,WIDTH'),
    (['inpaint', '{d}/src.png', '--box', '20,0,16,16'], 'reaches past the 32×32 picture'),
    (['outpaint', '{d}/src.png', '--grow', 'right:32'], "write SIDE=PIXELS[,SIDE=PIXELS...]"),
    (['outpaint', '{d}/src.png', '--grow', 'up=32'], "write SIDE=PIXELS[,SIDE=PIXELS...]"),
    (['outpaint', '{d}/src.png', '--grow', 'right=-32'], "write SIDE=PIXELS[,SIDE=PIXELS...]"),
    (['outpaint', '{d}/src.png', '--grow', 'right=32,right=32'], "each SIDE once"),
    (['outpaint', '{d}/src.png', '--grow', 'right=0'], 'adds no pixels'),
    (['outpaint', '{d}/src.png', '--grow', 'right=16'], 'steps of 32 pixels, so right=16 cannot be drawn'),
    (['variations', '{d}/src.png', '--model', 'shapes-small'], 'this model has no CLIP; use a CLIP model, e.g. --model shapes-clip'),
]


@needs_small
@pytest.mark.parametrize('args,message', BAD_EDITS, ids=[f"{a[0]}:{m[:24]}" for a, m in BAD_EDITS])
def test_edit_bad_inputs(edit_files, tmp_path, capsys, args, message):
    "Each mistake: exit code 2, one line `paella_nb edit: error: ...` that names the fix; nothing written."
    args = [a.format(d=edit_files) for a in args]
    if args[0] != 'variations' and '--prompt' not in args: args += ['--prompt', 'a blue circle']
    code, out, err = _edit(capsys, *args, '--out', tmp_path / 'out.png')
    assert code == 2, (out, err)
    assert err.startswith('paella_nb edit: error: ') and err.count('\n') == 1, err
    assert message.format(d=edit_files) in err, err
    assert not list(tmp_path.iterdir())


def test_edit_error_has_no_traceback(tmp_path):
    "From the console: a missing source is one line on stderr and exit code 2 (no traceback)."
    r = run('edit', 'restyle', str(tmp_path / 'nope.png'), '--prompt', 'a red circle', '--out', str(tmp_path / 'o.png'))
    assert r.returncode == 2 and r.stderr.strip().count('\n') == 0, r.stderr
    assert r.stderr.startswith('paella_nb edit: error: ') and 'does not exist' in r.stderr
