"""Refresh the saved outputs of the course notebooks: `python tools/refresh_outputs.py [NOTEBOOK ...]`.

With no argument it refreshes every chapter (`nbs/NN_*.ipynb`), `nbs/index.ipynb` and the solution notebooks
(`nbs/solutions/*.ipynb`; the student editions in `nbs/exercises/` stay without outputs, so they give nothing away).

How a notebook is run
- By `nbclient` in a real `python3` kernel (what JupyterLab runs), started in the notebook's folder, one notebook
  at a time, each in a fresh kernel.
- Only its *default* cells run, as `nbdev_test` runs them: cells flagged with a flag of settings.ini's `tst_flags`
  (`#| slow`, `#| gpu`, `#| download`, ...), cells with `#| eval: false` and `nbdev_export()` cells are skipped and
  saved with no output (the filter is nbdev's own: `nbdev.test.test_nb`'s `_no_eval`, repeated in `skip_cell`).
- `IN_TEST` is NOT set, so `RUN_SLOW` stays `False`: the outputs are what a student's Run All shows.
- A fixed environment: `PYTHONHASHSEED=0`, `random`, numpy and torch seeded with 0 before the first cell, one CPU thread (`OMP_NUM_THREADS=1`: the same numbers on any machine),
  offline Hugging Face, `TQDM_DISABLE=1` (no progress bars in saved outputs), matplotlib's inline backend with PNG
  figures at 72 dpi.

What is saved, so that a refresh on another machine gives a small diff
- Absolute paths are rewritten: the repository → `<repo>`, the home folder → `~`, temporary folders → `<tmp>`,
  Python's install prefix → `<python>`; memory addresses (`at 0x7f..`) → `at 0x…`.
- Wall-clock times: in the outputs of a cell that reads a clock (`time.time()`, `time.perf_counter()`,
  `time.process_time()`, a training history's `hist['seconds']`, or says `wall-clock` in a comment), every duration (`12.3 s`, `45 ms`, `1.5 min`) is
  saved as `‹time›` (and a speed ratio such as `1.4x` as `‹ratio›`): such numbers change from run to run and from machine to machine; run the cell to measure
  yours. Durations read from shipped files (a model card's training time) are kept.
- In every output: throughputs (`24.5 img/s`) → `‹speed›`, a dict's `'..._seconds': 81.2` → `‹time›`, a random
  port (`MASTER_PORT=37449`) → `‹port›`.
- Interactive widgets (ipywidgets) are saved as one line of text saying to run the cell: their state is per
  session (random model ids) and needs a live kernel anyway.
- Long text is cut (at most 60 lines / 6,000 characters per output) with a note; consecutive stream chunks are
  merged; an image displayed twice in a row (a figure returned by a cell *and* flushed by the inline backend) is
  kept once; large HTML (over 20 kB) keeps only its text form.
- The notebook is cleaned as `nbdev_clean` cleans it, so CI's `nbdev_clean` leaves it unchanged.

A notebook that fails: the command prints the notebook, the cell's index and first line and the error, writes
nothing for that notebook (each notebook is written atomically, `paella_nb.data.atomic_write`, only after all its
cells ran), goes on with the others, and exits with status 1.

It also records, in `nbs/.outputs.json`, which cells produced output (by a hash of their source), so that
`tests/test_outputs.py` can tell, without running anything, that a cell which prints or draws lost its output.
"""
import argparse, collections, hashlib, json, os, re, sys, sysconfig, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
MANIFEST = NBS / '.outputs.json'
REFRESH_CMD = 'python tools/refresh_outputs.py'
MAX_LINES, MAX_CHARS, MAX_HTML = 60, 6000, 20_000
DPI = 72
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'
WIDGET_NOTE = '[an interactive widget: run the cell in Jupyter to use it]'

def default_notebooks() -> list[Path]:
    "The solutions (chapter 17 grades one: it reads it as saved), then every chapter in course order, then the index."
    return sorted((NBS / 'solutions').glob('*.ipynb')) + sorted(NBS.glob('[0-9][0-9]_*.ipynb')) + [NBS / 'index.ipynb']

def _rel(p: Path) -> str:
    try: return str(p.relative_to(ROOT))
    except ValueError: return str(p)

def cell_hash(source) -> str:
    "A short hash of a cell's source (a list of lines or a string), as stored in the manifest."
    src = ''.join(source) if isinstance(source, list) else source
    return hashlib.sha1(src.strip().encode()).hexdigest()[:12]

# ---------------------------------------------------------------------------------------------------------------
# Which cells run: nbdev's own rule
def skip_flags() -> set:
    from nbdev.config import get_config
    return set(get_config().tst_flags.split())

def directives(fn: Path) -> list:
    "Each cell's nbdev directives (`#| ...`), parsed by nbdev itself, in notebook order."
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    nb = NBProcessor(fn, procs=FrontmatterProc, process=True).nb
    return [getattr(c, 'directives_', {}) or {} for c in nb.cells]

def skip_cell(cell, direc: dict, flags: set) -> bool:
    "True for a cell that `nbdev_test` does not run (the same test as `_no_eval` in `nbdev.test.test_nb`)."
    if cell['cell_type'] != 'code': return True
    if 'nbdev_export' + '(' in ''.join(cell['source']): return True
    if direc.get('eval:', [''])[0].lower() == 'false': return True
    return bool(flags & direc.keys())

# ---------------------------------------------------------------------------------------------------------------
# The kernel's environment and the code that prepares it (run before the notebook; its outputs are not saved)
def kernel_env() -> dict:
    env = dict(os.environ)
    for k in ('IN_TEST', 'MPLBACKEND', 'JPY_PARENT_PID'): env.pop(k, None)   # MPLBACKEND=Agg would hide every figure
    env.update(PYTHONHASHSEED='0', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE',
               HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_DATASETS_OFFLINE='1', TQDM_DISABLE='1',
               HF_DATASETS_DISABLE_PROGRESS_BARS='1', HF_HUB_DISABLE_PROGRESS_BARS='1', PYTHONWARNINGS='ignore::DeprecationWarning')
    return env

SETUP = f"""
%matplotlib inline
%config InlineBackend.figure_formats = ['png']
%config InlineBackend.rc = {{'figure.dpi': {DPI}, 'savefig.dpi': {DPI}}}
import matplotlib as _mpl, random as _random, numpy as _np, torch as _torch
_mpl.rcParams.update({{'figure.dpi': {DPI}, 'savefig.dpi': {DPI}}})
_random.seed(0); _np.random.seed(0); _torch.manual_seed(0)           # a cell that draws without a seed: the same draw
del _mpl, _random, _np, _torch
"""

# ---------------------------------------------------------------------------------------------------------------
# Making outputs stable
def _path_subs() -> list:
    subs = [(str(ROOT), '<repo>')]
    for p in {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['stdlib'], sys.prefix, sys.base_prefix}:
        subs.append((str(Path(p)), '<python>'))
    subs.append((str(Path.home()), '~'))
    subs.sort(key=lambda s: -len(s[0]))                          # the longest prefix first
    return subs

_TMP = re.compile(r'(?:' + re.escape(tempfile.gettempdir().rstrip('/')) + r'|/tmp|/var/folders/[\w/]+?/T)/[\w.\-]+')
_CLOCK = re.compile(r"time\.time\(\)|perf_counter\(\)|process_time\(\)|hist(?:ory)?\['seconds'\]|wall-clock")
_DURATION = re.compile(r'(?<![\w.])( *)\d+(?:\.\d+)?\s?(?:ms|s|sec|seconds|min|minutes)\b')   # with its padding
_RATIO = re.compile(r'(?<![\w.])\d+(?:\.\d+)?[x×](?![\w])')                 # "1.4x the fp32 time"
_SPEED = re.compile(r'(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:img|tok|it|samples|images|steps)/s\b')   # throughput
_SECONDS_KEY = re.compile(r"('\w*seconds'|\"\w*seconds\"):\s*\d+(?:\.\d+)?(?:e[-+]?\d+)?")    # {'train_seconds': 81.2}
_PORT = re.compile(r'\b(MASTER_PORT=|port[ =:])\d{4,5}\b')
_ADDR = re.compile(r'\b(at|id=|object at) 0x[0-9a-fA-F]{6,}')

def scrub(text: str, subs, clocked=False) -> str:
    "Rewrite absolute paths and memory addresses in one text (and durations, for a cell that reads a clock)."
    for old, new in subs: text = text.replace(old, new)
    if clocked: text = _RATIO.sub('‹ratio›', _DURATION.sub(lambda m: (' ' if m.group(1) else '') + '‹time›', text))
    text = _TMP.sub('<tmp>', text)
    text = _SPEED.sub('‹speed›', _SECONDS_KEY.sub(lambda m: m.group(1) + ': ‹time›', text))
    text = _PORT.sub(lambda m: m.group(1) + '‹port›', text)
    return _ADDR.sub(lambda m: m.group(1) + ' 0x…', text)

def cap(text: str) -> str:
    "Cut a long text, saying so."
    lines = text.splitlines(keepends=True)
    if len(lines) <= MAX_LINES and len(text) <= MAX_CHARS: return text
    keep, n = [], 0
    for ln in lines[:MAX_LINES]:
        if n + len(ln) > MAX_CHARS: break
        keep.append(ln); n += len(ln)
    cut = len(lines) - len(keep)
    return ''.join(keep) + f'… [{cut} more lines are not saved; run the cell to see them]\n'

def _text(v) -> str: return ''.join(v) if isinstance(v, list) else v

def stabilise(outputs: list, subs, clocked=False) -> list:
    "Stable, small outputs for one cell (see the module docstring)."
    res = []
    for o in outputs:
        o = dict(o)
        if o['output_type'] == 'stream':
            if res and res[-1]['output_type'] == 'stream' and res[-1]['name'] == o['name']:
                res[-1] = {**res[-1], 'text': _text(res[-1]['text']) + _text(o['text'])}; continue
            o['text'] = _text(o['text'])
        elif o['output_type'] in ('display_data', 'execute_result'):
            data = dict(o['data'])
            if WIDGET_MIME in data: data = {'text/plain': WIDGET_NOTE}
            if len(_text(data.get('text/html', ''))) > MAX_HTML and 'text/plain' in data: data.pop('text/html')
            o['data'], o['metadata'] = data, {k: v for k, v in o.get('metadata', {}).items() if k in data}
            if res and res[-1]['output_type'] in ('display_data', 'execute_result') and res[-1]['data'] == data:
                continue                                          # the same picture twice in a row
        res.append(o)
    for o in res:
        if o['output_type'] == 'stream': o['text'] = cap(scrub(o['text'], subs, clocked))
        elif 'data' in o:
            for k, v in o['data'].items():
                if k.startswith('text/'):
                    t = scrub(_text(v), subs, clocked)
                    o['data'][k] = cap(t) if k == 'text/plain' else t
    return res

def has_error(outputs) -> bool:
    return any(o['output_type'] == 'error' for o in outputs)

# ---------------------------------------------------------------------------------------------------------------
class CellFailed(Exception): pass

def run_notebook(fn: Path, timeout: int = 1800):
    "Run `fn`'s default cells in a fresh kernel; return (notebook with stable outputs, manifest entry)."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(fn, as_version=4)
    direcs, flags, subs = directives(fn), skip_flags(), _path_subs()
    if len(direcs) != len(nb.cells): raise RuntimeError(f"{fn}: nbdev and nbformat disagree on the cells")
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=False, record_timing=False,
                            store_widget_state=False, resources={'metadata': {'path': str(fn.parent)}})
    entry = {'produced': [], 'silent': []}
    with client.setup_kernel(env=kernel_env()):
        # nbclient's Output-widget hook writes into `widget_state` even when it is not stored (KeyError): give it a
        # place to write; nothing of it reaches the notebook (widgets are saved as one line of text, see above)
        client.widget_state = collections.defaultdict(dict)
        nb.cells.append(nbformat.v4.new_code_cell(SETUP))        # nbclient stores a cell at its index: run the
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)      # set-up as a last cell, then take it away
        nb.cells.pop()
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code': continue
            cell.outputs, cell.execution_count = [], None
            if skip_cell(cell, direcs[i], flags): continue
            try: client.execute_cell(cell, i)
            except CellExecutionError as e:
                first = next((ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith('#|')), '')
                raise CellFailed(f"{_rel(fn)}: cell {i} (`{first.strip()[:70]}`) failed:\n{str(e)[-3000:]}") from None
            cell.outputs = [nbformat.from_dict(o) for o in stabilise(cell.outputs, subs, bool(_CLOCK.search(cell.source)))]
            if has_error(cell.outputs): raise CellFailed(f"{_rel(fn)}: cell {i} saved an error output")
            entry['produced' if cell.outputs else 'silent'].append(cell_hash(cell.source))
    return nb, entry

def to_text(nb) -> str:
    "The notebook as `nbdev_clean` writes it (so CI's `nbdev_clean` changes nothing)."
    import nbformat
    from nbdev.clean import _nbdev_clean
    from execnb.nbio import nb2str
    d = json.loads(nbformat.writes(nb))                           # nbformat's line splitting, as Jupyter saves
    _nbdev_clean(d)
    return nb2str(d)

def update_manifest(entries: dict):
    from paella_nb.data import write_json
    data = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    data.update(entries)
    write_json(MANIFEST, dict(sorted(data.items())))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('notebooks', nargs='*', help='notebooks to refresh (default: chapters, index, solutions)')
    ap.add_argument('--timeout', type=int, default=1800, help='seconds one cell may run')
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    from paella_nb.data import atomic_write
    fns = [Path(p).resolve() for p in args.notebooks] or default_notebooks()
    failed = []
    for fn in fns:
        if not fn.exists(): failed.append(f"{fn}: no such notebook"); print(f"FAILED {fn}: no such notebook"); continue
        t0 = time.time(); rel = _rel(fn)
        try: nb, entry = run_notebook(fn, args.timeout)
        except CellFailed as e:
            failed.append(str(e).split('\n')[0]); print(f"FAILED {e}\n(nothing written for {rel})", flush=True); continue
        text = to_text(nb)
        atomic_write(fn, lambda tmp: Path(tmp).write_text(text, encoding='utf-8'))
        if fn.is_relative_to(NBS): update_manifest({fn.relative_to(NBS).as_posix(): entry})
        n_img = sum('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
        print(f"ok {rel}: {len(entry['produced'])} cells with output, {n_img} images, "
              f"{len(text.encode()) / 1e6:.2f} MB, {time.time() - t0:.0f} s", flush=True)
    if failed:
        print("\nThese notebooks failed and were left as they were:\n  " + '\n  '.join(failed))
        return 1
    return 0

if __name__ == '__main__': sys.exit(main())
