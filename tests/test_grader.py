"""The classroom grader: honest submissions get their marks; attacks get none and leave no trace outside their sandbox.

The checkers decide in the grader, on answers the sandbox recorded as data (chapter 15's `_Recorder`/`_Replayer`);
the first test shows that this channel gives every checker the same verdict and feedback as calling it directly."""
import json, os, random, time, warnings
from pathlib import Path

import pytest
import torch

import paella_nb.classroom as cl
from paella_nb.exercises import EXERCISES, _Recorder, _Replayer, _Side, _run_body, _encode, _decode, _StandIn
from safetensors.torch import save as save_tensors, load as load_tensors

ROOT = Path(__file__).resolve().parent.parent
SOL = ROOT / 'nbs' / 'solutions'
def _bwrap_works() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return cl._sandbox_kind('auto') == 'bwrap'
needs_bwrap = pytest.mark.skipif(not _bwrap_works(), reason="bubblewrap is missing or cannot start a sandbox here "
                                                            "(apt-get install bubblewrap)")
torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------------
# the channel: record on the student's side, judge from data on the grader's side
def _through_the_channel(e, work):
    "Record `work`'s answers, send them as bytes (JSON + safetensors), judge them from the bytes alone."
    rec = _Recorder()
    value = _encode(work, rec.tensors) if e.kind == 'value' else None
    _run_body(e, work, rec)
    text = json.dumps(dict(records=rec.records, value=value))
    blob = save_tensors(rec.tensors) if rec.tensors else b''
    ans, tensors = json.loads(text), (load_tensors(blob) if blob else {})
    judged_work = _decode(ans['value'], tensors) if e.kind == 'value' else type(e.name, (_StandIn,), {})()
    return _run_body(e, judged_work, _Replayer(ans['records'], tensors))


def _cases():
    from test_exercises import WRONG, COURSE, BAD
    cases = [(n, w, 'wrong') for n, w, _ in WRONG] + [(n, w, 'course') for n, w in COURSE.items()]
    cases.append(('small_data_report', dict(n_train=[16, 256], train_loss=[1.1, 1.3], val_loss=[1.5, 1.35]), 'course'))
    cases += [(n, w, f'bad:{k}') for n in ('add_noise', 'ResBlock', 'sample_blog') for k, w in BAD.items()]
    return cases

@pytest.mark.parametrize('name,work,kind', _cases(), ids=[f'{n}-{i}-{k}' for i, (n, _, k) in enumerate(_cases())])
def test_channel_gives_the_same_verdict(name, work, kind):
    e = EXERCISES[name]
    random.seed(0); here = _run_body(e, work, _Side())                   # (one wrong answer uses Python's random)
    random.seed(0); there = _through_the_channel(e, work)
    assert (here.success, here.failure, here.passed) == (there.success, there.failure, there.passed)
    assert here.success == (kind == 'course'), here.report()


def test_forged_answers_are_judged_not_trusted():
    e = EXERCISES['add_noise']
    for records in ([], [dict(out={'$tuple': ['ok', True, None]}, moved=False, error=None, effects=[])] * 9,
                    [dict(out={'$obj': 'x'}, moved=False, error=None, effects=[[99, 'x']])], 'pass', [None]):
        fb = _run_body(e, type('add_noise', (_StandIn,), {})(), _Replayer(records, {}))
        assert not fb.success, records


# ---------------------------------------------------------------------------------------------------------------
# the sandbox
def _nb(*cells):
    return json.dumps({'cells': [{'cell_type': 'code', 'metadata': {}, 'source': c, 'outputs': [], 'execution_count': None}
                                 for c in cells], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5})

GOOD_CFG = 'def cfg_logits(cond, uncond, w):\n    return uncond + w * (cond - uncond)'
GOOD_RENOISE = ('import torch\ndef renoise(x, t, start_noise):\n'
                '    return torch.where(torch.rand(x.shape) < t, start_noise, x)')

def _alive(token: str) -> list[int]:
    "Processes whose command line holds `token`."
    found = []
    for d in filter(str.isdigit, os.listdir('/proc')):
        try:
            if token.encode() in Path(f'/proc/{d}/cmdline').read_bytes(): found.append(int(d))
        except OSError: pass
    return found


@pytest.fixture(scope='module')
def graded(tmp_path_factory):
    "One folder: honest, wrong, broken and hostile submissions, graded in bubblewrap sandboxes, two at a time."
    d = tmp_path_factory.mktemp('submissions')
    outside = tmp_path_factory.mktemp('outside')
    sol = (SOL / '03_noising.ipynb').read_text()
    (d / 'ada').mkdir()
    (d / 'ada' / '03_noising.ipynb').write_text(sol)                                                  # correct
    (d / 'ada' / '07_sampler.ipynb').write_text(_nb('from paella_nb.exercises import check_cfg_logits',
        GOOD_CFG + '\ncheck_cfg_logits(cfg_logits)', 'def renoise(x, t, start_noise):\n    return x',
        'while True: pass'))                                                                            # partial, hangs
    (d / 'bob_03_noising.ipynb').write_text(sol.replace('torch.rand(x.shape, device=x.device) < t[:, None, None]',
                                                        'torch.rand(x.shape, device=x.device) > t[:, None, None]'))  # wrong
    (d / 'cy_03_noising.ipynb').write_text('{"cells": [ this is not json')                            # broken
    (d / 'dee_03_noising.ipynb').write_text(_nb('from paella_nb.noising import add_noise',
                                                'def loss_weight(t, mask, min_val=0.3):\n    return 1 +'))  # syntax error
    (d / 'README.txt').write_text('submissions of week 3')                                             # not a notebook
    (d / '.ipynb_checkpoints').mkdir(); (d / '.ipynb_checkpoints' / 'x.ipynb').write_text('{}')          # ignored
    # attacks
    (d / 'forger_07_sampler.ipynb').write_text(_nb(                       # "pass" lines anywhere, forged answer files
        "import glob, json, os, sys\n"
        "for p in glob.glob('**/*', recursive=True) + glob.glob('/tmp/**/*', recursive=True) + sys.argv[1:]:\n"
        "    try: open(p, 'a').write('pass\\n')\n    except OSError: pass",
        "os.makedirs('out', exist_ok=True)\n"
        "json.dump(dict(problems=[], found=['cfg_logits', 'renoise', 'sample_blog'], imported=[]), open('out/notebook.json', 'w'))\n"
        "for n in ('cfg_logits', 'renoise', 'sample_blog'): json.dump(dict(status='done', value=None, records=[]), open(f'out/{n}.json', 'w'))\n"
        "open('results.jsonl', 'w').write('{\"kind\": \"result\", \"name\": \"cfg_logits\", \"status\": \"pass\"}\\n')",
        "import subprocess\nforge = \"import json, time\\nfor _ in range(600):\\n    json.dump(dict(status='done', value=None, records=[]), open('out/cfg_logits.json', 'w')); time.sleep(0.05)\"\n"
        "subprocess.Popen([sys.executable, '-c', forge], start_new_session=True)",
        "def cfg_logits(cond, uncond, w): return cond"))
    (d / 'patcher_07_sampler.ipynb').write_text(_nb(                      # the checkers replaced in its own process
        "import paella_nb.exercises as ex\nfor e in ex.EXERCISES.values(): e.check = e.body = lambda *a, **k: True\n"
        "ex._run_body = lambda e, work, side: ex.Feedback(e.name)",
        "def cfg_logits(cond, uncond, w): return cond\ndef renoise(x, t, start_noise): return x"))
    (d / 'copier_07_sampler.ipynb').write_text(_nb(                       # runs the shipped teacher's edition
        "import json\nfrom paella_nb.data import course_root\n"
        f"for p in [course_root() / 'nbs/solutions/07_sampler.ipynb', '{SOL / '07_sampler.ipynb'}']:\n"
        "    try: nb = json.load(open(p)); break\n    except OSError: pass\n"
        "for c in nb['cells']:\n    if c['cell_type'] == 'code' and 'def ' in ''.join(c['source']): exec(''.join(c['source']))"))
    victim = d / 'eve_07_sampler.ipynb'
    victim.write_text(_nb(GOOD_CFG, GOOD_RENOISE))                                                   # a classmate
    (d / 'vandal_07_sampler.ipynb').write_text(_nb(                       # writes and deletes outside its folder
        "import os, shutil\n"
        f"for p in ['{victim}', '{ROOT / 'README.md'}', '{outside}/planted.txt', os.path.expanduser('~/../planted.txt')]:\n"
        "    try: open(p, 'w').write('vandalised')\n    except OSError: pass\n"
        f"for p in ['{victim}', '{ROOT / 'settings.ini'}']:\n"
        "    try: os.remove(p)\n    except OSError: pass\n"
        f"shutil.rmtree('{outside}', ignore_errors=True)",
        GOOD_CFG))
    (d / 'hog_07_sampler.ipynb').write_text(_nb(                          # 8 GB inside one exercise
        "def cfg_logits(cond, uncond, w):\n    hog = bytearray(8 * 2**30)\n    return uncond + w * (cond - uncond)",
        GOOD_RENOISE))
    before = {p: p.read_bytes() for p in (victim, ROOT / 'README.md', ROOT / 'settings.ini')}
    t0 = time.perf_counter()
    subs = cl.grade(d, cell_timeout=3, check_timeout=30, timeout=120, jobs=2, sandbox='bwrap')
    return d, outside, before, {s.path: s for s in subs}, time.perf_counter() - t0


@needs_bwrap
def test_honest_submissions_get_their_marks(graded):
    d, _, _, subs, seconds = graded
    ada = subs['ada/03_noising.ipynb']
    assert ada.student == 'ada' and ada.error is None and ada.score == (4, 4), ada
    bob = subs['bob_03_noising.ipynb']
    assert bob.results['add_noise'] == 'fail' and bob.score == (3, 4)
    assert 'it should replace each token with probability t' in bob.feedback['add_noise']
    assert 'not valid notebook JSON' in subs['cy_03_noising.ipynb'].error
    dee = subs['dee_03_noising.ipynb']
    assert any('syntax error' in p for p in dee.problems)
    assert dee.results['add_noise'] == 'missing' and "course's own version" in dee.feedback['add_noise']
    assert 'not a notebook' in subs['README.txt'].error
    ada7 = subs['ada/07_sampler.ipynb']
    assert ada7.results == {'cfg_logits': 'pass', 'renoise': 'fail', 'sample_blog': 'missing'}
    assert any('longer than 3 s' in p for p in ada7.problems)
    assert subs['eve_07_sampler.ipynb'].results == {'cfg_logits': 'pass', 'renoise': 'pass', 'sample_blog': 'missing'}
    assert not any(p.name.startswith('.ipynb') for p in map(Path, subs))
    print(f"graded {len(subs)} files in {seconds:.0f} s")


@needs_bwrap
@pytest.mark.parametrize('who', ['forger', 'patcher', 'copier'])
def test_no_marks_without_the_work(graded, who):
    sub = graded[3][f'{who}_07_sampler.ipynb']
    assert sub.score[0] == 0, (sub.results, sub.feedback, sub.problems)
    if who == 'copier': assert sub.problems, 'the solutions should be out of reach'


@needs_bwrap
def test_nothing_changes_outside_the_sandbox(graded):
    d, outside, before, subs, _ = graded
    for p, data in before.items(): assert p.read_bytes() == data, p          # the classmate's notebook survives
    assert outside.is_dir() and not (outside / 'planted.txt').exists()
    assert subs['vandal_07_sampler.ipynb'].results['cfg_logits'] == 'pass'   # its own honest work still counts
    assert not (d / 'results.jsonl').exists() and 'pass' not in (d / 'README.txt').read_text()


@needs_bwrap
def test_memory_hog_is_capped(graded):
    hog = graded[3]['hog_07_sampler.ipynb']
    assert hog.results['cfg_logits'] == 'fail' and 'MemoryError' in hog.feedback['cfg_logits']
    assert hog.results['renoise'] == 'pass'                                  # the grader and the rest survive


@needs_bwrap
def test_fork_bomb_and_background_children(tmp_path):
    tag_bomb, tag_bg = '77.123', '88.123'
    (tmp_path / 'bomb_07_sampler.ipynb').write_text(_nb(
        "import os\nkids = 0\nwhile kids < 2000:\n    pid = os.fork()\n"
        f"    if pid == 0: os.execvp('sleep', ['sleep', '{tag_bomb}'])\n    kids += 1",
        GOOD_CFG))
    (tmp_path / 'daemon_07_sampler.ipynb').write_text(_nb(
        f"import subprocess\nsubprocess.Popen(['sleep', '{tag_bg}'], start_new_session=True)\n"
        f"subprocess.Popen(['sh', '-c', 'sleep {tag_bg} & disown'], start_new_session=True)",
        GOOD_CFG))
    subs = {s.path: s for s in cl.grade(tmp_path, cell_timeout=20, check_timeout=30, timeout=120, sandbox='bwrap')}
    bomb = subs['bomb_07_sampler.ipynb']
    assert any('Resource temporarily unavailable' in p or 'BlockingIOError' in p for p in bomb.problems), bomb.problems
    assert bomb.results['cfg_logits'] == 'pass' and subs['daemon_07_sampler.ipynb'].results['cfg_logits'] == 'pass'
    time.sleep(0.5)
    assert _alive(tag_bomb) == [] and _alive(tag_bg) == []


# ---------------------------------------------------------------------------------------------------------------
# without bubblewrap
def test_fallback_says_so(monkeypatch):
    monkeypatch.setattr(cl.shutil, 'which', lambda name: None)
    with pytest.warns(UserWarning, match='bubblewrap'): assert cl._sandbox_kind('auto') == 'process'
    with pytest.raises(RuntimeError, match='bubblewrap'): cl._sandbox_kind('bwrap')


def test_fallback_process_still_judges_and_cleans_up(tmp_path):
    tag = '99.123'
    (tmp_path / 'ada_07_sampler.ipynb').write_text(_nb(GOOD_CFG, f"import subprocess\nsubprocess.Popen(['sleep', '{tag}'], start_new_session=True)"))
    (tmp_path / 'forger_07_sampler.ipynb').write_text(_nb(
        "import os, json\nos.makedirs('out', exist_ok=True)\n"
        "json.dump(dict(status='done', value=None, records=[]), open('out/cfg_logits.json', 'w'))\n"
        "def cfg_logits(cond, uncond, w): return cond"))
    subs = {s.path: s for s in cl.grade(tmp_path, timeout=120, sandbox='process')}
    assert subs['ada_07_sampler.ipynb'].results['cfg_logits'] == 'pass'
    assert subs['forger_07_sampler.ipynb'].score[0] == 0
    time.sleep(0.5)
    assert _alive(tag) == []


# ---------------------------------------------------------------------------------------------------------------
# the teacher's side
def test_private_checkers_replace_public_ones_for_one_grading(tmp_path):
    private = tmp_path / 'private' / 'hidden.py'
    private.parent.mkdir()
    private.write_text("import torch\nfrom paella_nb.exercises import exercise, _call\n"
                       "@exercise('cfg_logits', '07', 'guidance, hidden cases', 5, 'one line')\n"
                       "def check_cfg_logits(fn, fb):\n"
                       "    out = _call(fb, fn, torch.ones(3), torch.zeros(3), 7.0)\n"
                       "    fb.require(torch.allclose(out, torch.full((3,), 7.0)), 'hidden case: w=7 should give 7.')\n"
                       "    fb.ok('hidden case')\n")
    sub_dir = tmp_path / 'subs'; sub_dir.mkdir()
    (sub_dir / 'ada_07_sampler.ipynb').write_text(_nb(GOOD_CFG))
    (sub_dir / 'bob_07_sampler.ipynb').write_text(_nb('def cfg_logits(cond, uncond, w): return cond + 0 * w'))
    body = EXERCISES['cfg_logits'].body
    subs = {s.path: s for s in cl.grade(sub_dir, timeout=120, checkers=[private], jobs=2)}
    assert subs['ada_07_sampler.ipynb'].results['cfg_logits'] == 'pass' and 'hidden case' in subs['ada_07_sampler.ipynb'].feedback['cfg_logits']
    assert 'hidden case: w=7' in subs['bob_07_sampler.ipynb'].feedback['cfg_logits']
    assert EXERCISES['cfg_logits'].body is body                              # the public checker is back


def test_score_table_and_csv(tmp_path):
    subs = [cl.Submission('ada/03_noising.ipynb', 'ada', ['03'], {'add_noise': 'pass', 'loss_weight': 'fail'},
                          {'loss_weight': '── loss_weight ── ✗ not yet\n  ✗ kept tokens get weight 0.'}),
            cl.Submission('ada/07_sampler.ipynb', 'ada', ['07'], {'cfg_logits': 'pass'}),
            cl.Submission('notes.txt', 'notes', error='not a notebook (.ipynb): skipped')]
    table = cl.score_table(subs)
    assert '1/2' in table and 'TOTAL PER STUDENT' in table and 'ada: 2/3' in table and 'kept tokens get weight 0' in table
    cl.write_csv(subs, tmp_path / 'scores.csv')
    assert 'ada/03_noising.ipynb,loss_weight,fail' in (tmp_path / 'scores.csv').read_text()
    with pytest.raises(FileNotFoundError, match='not a folder'): cl.grade(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    assert cl.grade(tmp_path / 'empty') == []
