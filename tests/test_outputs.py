"""The notebooks are stored with their outputs (pictures, tables, printed numbers), and those outputs are sound.

Cheap: it reads the notebooks, it runs nothing. `python tools/refresh_outputs.py [NOTEBOOK ...]` refreshes them and
writes `nbs/.outputs.json`, a manifest of which cells (by a hash of their source) produced output.

What it catches
- a chapter, the index or a solution notebook with no saved output at all, or never refreshed (not in the manifest);
- a saved error (an `error` output, or a traceback printed to stderr);
- a cell the manifest says produced output, whose output is now missing (e.g. cleared by hand or by a tool);
- a cell that is new or edited since the last refresh, with no output, that visibly produces one: it prints,
  shows or plots, or its last line is a bare expression that is not a plain function call (a heuristic: it
  cannot know that `f(x)` on the last line returns something);
- student editions (`nbs/exercises/`) with outputs (they would give the answers away).
What it cannot catch: an output that is stale (the code changed and its output did not), or wrong numbers; CI does
not compare outputs or pixels. Refresh after changing a chapter.
"""
import ast, json, re, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
sys.path.insert(0, str(ROOT / 'tools'))
from refresh_outputs import default_notebooks, cell_hash, skip_cell, skip_flags, directives, MANIFEST, REFRESH_CMD

NOTEBOOKS = default_notebooks()
FLAGS = skip_flags()

def _rel(p): return p.relative_to(NBS).as_posix()
def _fix(p): return f"refresh it with `{REFRESH_CMD} nbs/{_rel(p)}` and commit the notebook and nbs/.outputs.json"

@pytest.fixture(scope='module')
def manifest():
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}

def _code_cells(p):
    nb = json.loads(p.read_text(encoding='utf-8'))
    direcs = directives(p)
    return [(i, c, direcs[i]) for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code']

_SHOW_CALLS = {'print', 'display', 'show', 'imshow', 'plot', 'subplots', 'figure', 'bar', 'hist', 'scatter'}

def _shows(node) -> bool:
    "Does this top-level statement (not a def or class body) call print/display/show*/a plotting function?"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)): return False
    if isinstance(node, ast.Call):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''
        if name in _SHOW_CALLS or name.startswith('show'): return True
    return any(_shows(c) for c in ast.iter_child_nodes(node))

def visibly_outputs(src: str) -> bool:
    """Heuristic: does running this cell show something? It does when a top-level statement prints, displays, shows
    or plots, or when its last line is a bare expression that is not a plain function call."""
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return False
    if any(_shows(n) for n in tree.body): return True
    last = tree.body[-1] if tree.body else None
    return isinstance(last, ast.Expr) and not isinstance(last.value, (ast.Call, ast.Constant, ast.Await, ast.Yield))

@pytest.mark.parametrize('p', NOTEBOOKS, ids=_rel)
def test_notebook_has_saved_outputs(p, manifest):
    cells = _code_cells(p)
    assert _rel(p) in manifest, f"nbs/{_rel(p)} was never refreshed: {_fix(p)}"
    assert any(c.get('outputs') for _, c, _ in cells), f"nbs/{_rel(p)} has no saved output: {_fix(p)}"

@pytest.mark.parametrize('p', NOTEBOOKS, ids=_rel)
def test_no_error_outputs(p):
    for i, c, _ in _code_cells(p):
        for o in c.get('outputs', []):
            assert o['output_type'] != 'error', f"nbs/{_rel(p)} cell {i} has a saved error ({o.get('ename')}): fix it, then {_fix(p)}"
            if o['output_type'] == 'stream':
                assert 'Traceback (most recent call last)' not in ''.join(o['text']), \
                    f"nbs/{_rel(p)} cell {i} printed a traceback: fix it, then {_fix(p)}"

@pytest.mark.parametrize('p', NOTEBOOKS, ids=_rel)
def test_cells_that_produce_output_have_it(p, manifest):
    entry = manifest.get(_rel(p), {})
    produced, silent = set(entry.get('produced', [])), set(entry.get('silent', []))
    missing = []
    for i, c, direc in _code_cells(p):
        if c.get('outputs') or skip_cell(c, direc, FLAGS): continue
        h, src = cell_hash(c['source']), ''.join(c['source'])
        if h in produced or (h not in silent and visibly_outputs(src)):
            first = next((l for l in src.splitlines() if l.strip() and not l.startswith('#|')), '')
            missing.append(f"cell {i} (`{first.strip()[:60]}`)")
    assert not missing, f"nbs/{_rel(p)}: these cells produce output but have none saved: {', '.join(missing)}; {_fix(p)}"

def test_skipped_cells_have_no_outputs():
    "A `#| slow` (or other skipped) cell keeps no output: a saved output would not be what Run All shows."
    for p in NOTEBOOKS:
        for i, c, direc in _code_cells(p):
            if skip_cell(c, direc, FLAGS):
                assert not c.get('outputs'), f"nbs/{_rel(p)} cell {i} is skipped by Run All but has saved output: {_fix(p)}"

def test_student_editions_have_no_outputs():
    for p in sorted((NBS / 'exercises').glob('*.ipynb')):
        nb = json.loads(p.read_text(encoding='utf-8'))
        assert not any(c.get('outputs') for c in nb['cells'] if c['cell_type'] == 'code'), \
            f"nbs/exercises/{p.name} has outputs: run paella_nb.exercises.sync_student_notebooks()"

def test_saved_outputs_are_stable_and_small():
    "No absolute paths of this machine, no memory addresses, no progress bars, no huge outputs."
    home, bad = str(Path.home()), []
    for p in NOTEBOOKS:
        for i, c, _ in _code_cells(p):
            for o in c.get('outputs', []):
                texts = [''.join(o['text'])] if 'text' in o else [''.join(v) for k, v in o.get('data', {}).items() if k.startswith('text/')]
                for t in texts:
                    if str(ROOT) in t or (len(home) > 1 and home + '/' in t): bad.append(f"{_rel(p)} cell {i}: an absolute path")
                    if re.search(r' at 0x[0-9a-fA-F]{6,}', t): bad.append(f"{_rel(p)} cell {i}: a memory address")
                    if '\r' in t or re.search(r'\d+%\|[█▏▎▍▌▋▊▉ ]*\|', t): bad.append(f"{_rel(p)} cell {i}: a progress bar")
                    if len(t) > 25_000: bad.append(f"{_rel(p)} cell {i}: {len(t):,} characters of text")
                png = o.get('data', {}).get('image/png')
                if png and len(png) > 400_000: bad.append(f"{_rel(p)} cell {i}: a {len(png) * 3 // 4 // 1000} kB image")
    assert not bad, '; '.join(bad) + f"; refresh with `{REFRESH_CMD}` (it hides these)"

def test_refresh_names_the_failing_cell_and_changes_nothing_else(tmp_path, capsys):
    "The refresh command itself (runs two tiny notebooks in a kernel): a failing notebook is named and left as it was."
    import nbformat, refresh_outputs
    from nbformat.v4 import new_notebook, new_code_cell
    good, bad = tmp_path / 'good.ipynb', tmp_path / 'bad.ipynb'
    nbformat.write(new_notebook(cells=[new_code_cell("print('hello from', __import__('os').getcwd())")],
                                metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}), good)
    nbformat.write(new_notebook(cells=[new_code_cell('x = 1'), new_code_cell('1 / 0')]), bad)
    before = bad.read_bytes()
    assert refresh_outputs.main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert 'bad.ipynb: cell 1 (`1 / 0`) failed' in out and 'ZeroDivisionError' in out, out
    assert bad.read_bytes() == before                                        # left as it was
    cell = json.loads(good.read_text())['cells'][0]
    text = ''.join(cell['outputs'][0]['text'])
    assert text.startswith('hello from <tmp>/') and str(tmp_path) not in text   # ran in its folder; the path is hidden
