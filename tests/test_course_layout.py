"""The shape of the course: chapter names match module names, modules stay readable, notebooks open with a kernel.

These hold the promises of the course's layout (README, "What the course teaches") so they cannot quietly erode.
"""
import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p for p in (ROOT/'nbs').glob('[0-9][0-9]_*.ipynb'))
MAX_MODULE_LINES = 680          # "no module a person cannot read in one sitting": about 600 lines, with a little slack
# Known exceptions, each with its reason (shrink them, never add one quietly):
LARGE_MODULES = {'conditioning': 740}   # ByT5, MiniLM in plain torch, open_clip, the cache, CFG dropout, the Conditioner
# Imports of a later chapter's module (the course reads top to bottom: a chapter imports only earlier ones).
UPWARD_IMPORTS = {('exercises', 'checkers'),   # chapter 15 re-exports chapter 16's checkers, so students import one module
                  ('full_scale', 'cost_model'), # the trainer logs MFU with chapter 13's FLOP count
                  ('full_scale', 'cli')}        # `python -m paella_nb.full_scale` hands its arguments to the CLI


def _nb(p): return json.loads(p.read_text(encoding='utf-8'))
def _src(c): return ''.join(c['source'])


def test_there_are_chapters():
    assert len(CHAPTERS) >= 10, [p.name for p in CHAPTERS]


@pytest.mark.parametrize('path', CHAPTERS, ids=lambda p: p.stem)
def test_chapter_name_is_module_name(path):
    "nbs/NN_name.ipynb exports paella_nb/name.py (or nothing, for prose-only chapters)."
    exps = [m.group(1) for c in _nb(path)['cells'] if c['cell_type'] == 'code'
            for m in [re.match(r'#\|\s*default_exp\s+(\S+)', _src(c))] if m]
    assert len(exps) <= 1, f"{path.name} declares several default_exp: {exps}"
    if exps:
        assert exps[0] == path.stem.split('_', 1)[1], \
            f"{path.name} exports paella_nb/{exps[0]}.py: rename the notebook or the module so the names match"


def test_every_module_comes_from_a_chapter_and_is_readable():
    names = {p.stem.split('_', 1)[1] for p in CHAPTERS}
    for mod in sorted((ROOT/'paella_nb').glob('*.py')):
        if mod.name in ('__init__.py', '_modidx.py'): continue
        assert mod.stem in names, f"paella_nb/{mod.name} has no chapter nbs/NN_{mod.stem}.ipynb"
        n = len(mod.read_text(encoding='utf-8').splitlines())
        limit = LARGE_MODULES.get(mod.stem, MAX_MODULE_LINES)
        assert n <= limit, f"paella_nb/{mod.name} has {n} lines (> {limit}): split it along a seam"


def test_chapters_import_only_earlier_chapters():
    "A chapter's module imports (at the top or inside a function) only modules of earlier chapters."
    num = {p.stem.split('_', 1)[1]: int(p.stem.split('_', 1)[0]) for p in CHAPTERS}
    bad = []
    for mod in sorted((ROOT/'paella_nb').glob('*.py')):
        if mod.stem not in num or mod.stem == 'cli': continue
        src = mod.read_text(encoding='utf-8')
        deps = {d for t in re.findall(r'from\s+\.(\w+)\s+import|from\s+paella_nb\.(\w+)\s+import|import\s+paella_nb\.(\w+)', src)
                for d in t if d}
        bad += [(mod.stem, d) for d in sorted(deps) if d in num and num[d] > num[mod.stem] and (mod.stem, d) not in UPWARD_IMPORTS]
    assert not bad, f"modules importing a later chapter: {bad}; move the shared code to the earlier chapter"


@pytest.mark.parametrize('path', sorted((ROOT/'nbs').rglob('*.ipynb')), ids=lambda p: str(p.relative_to(ROOT/'nbs')))
def test_notebook_opens_with_python3_kernel(path):
    "A saved kernelspec spares the student JupyterLab's 'Select Kernel' dialog."
    ks = _nb(path).get('metadata', {}).get('kernelspec', {})
    assert ks.get('name') == 'python3', f"{path} has kernelspec {ks!r}: set metadata.kernelspec to python3"


@pytest.mark.parametrize('path', CHAPTERS + [ROOT/'nbs'/'index.ipynb'], ids=lambda p: p.stem)
def test_chapters_speak_to_students(path):
    "No development log in a chapter: notes about issues and sessions belong in DEVELOPING.md."
    text = '\n'.join(_src(c) for c in _nb(path)['cells'] if c['cell_type'] == 'markdown')
    bad = re.findall(r"\b(?:the issue (?:asks|says|wants)|this session|previous session|dev(?:elopment)? log)\b", text, re.I)
    assert not bad, f"{path.name} talks about development ({bad}): move that text to DEVELOPING.md"
