"""The student's path in a real browser (headless Chromium, driven by selenium).

- The course website (`tools/build_site.py`): the index and chapter 09 load from a static server on 127.0.0.1,
  every picture has loaded, no internal link is broken, formulas are typeset.
- JupyterLab: a copy of the course (`paella_nb.cli.copy_course`), `jupyter lab` on a free loopback port with a token,
  chapter 07 opened and run with Run All: no cell shows an error, the sampler widget shows generated images, and a
  new prompt + its Generate button change them.

Screenshots go to `_artifacts/screenshots/` (printed; CI keeps them). Outside CI the tests skip when Chromium or
chromedriver is not installed (`apt-get install chromium chromium-driver`; `pip install selenium`); with `CI=true`
they fail instead.
"""
import contextlib, functools, http.server, json, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, threading
import time, urllib.parse, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / '_artifacts' / 'screenshots'
IN_CI = os.environ.get('CI', '').lower() == 'true'
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--window-size=1280,1400']

def _unavailable(why):
    if IN_CI: pytest.fail(f"{why}: in CI the browser tests must run (.ci/run installs chromium and chromium-driver)")
    pytest.skip(why)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture
def browser(tmp_path):
    try: from selenium import webdriver
    except ImportError: _unavailable("selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    binary = next((shutil.which(b) for b in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(b)), None)
    driver_bin = shutil.which('chromedriver')
    if not binary or not driver_bin: _unavailable("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for f in FLAGS + [f'--user-data-dir={tmp_path / "chromium-profile"}']: opts.add_argument(f)
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver_bin))
    drv.set_page_load_timeout(120)
    try: yield drv
    finally: drv.quit()

def shot(drv, name) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    p = SHOTS / f'{name}.png'
    drv.save_screenshot(str(p))
    print(f"screenshot: {p.relative_to(ROOT)}")
    return p

def wait_for(cond, timeout, what, every=0.5):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v: return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

# ---------------------------------------------------------------------------------------------------------------
# the website
@pytest.fixture(scope='module')
def site(tmp_path_factory):
    sys.path.insert(0, str(ROOT / 'tools'))
    import build_site
    out = tmp_path_factory.mktemp('site') / '_site'
    r = build_site.build(out)
    print(f"site: {r['pages']} pages, {r['images']} images, built in {r['seconds']:.0f} s")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    handler = functools.partial(Quiet, directory=str(out))
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address): pass      # the browser dropping a connection is no error
    srv = Server(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/', out
    srv.shutdown(); srv.server_close()

def _link_ok(url) -> bool:
    try:
        with urllib.request.urlopen(url.split('#')[0], timeout=10) as r: return r.status == 200
    except OSError: return False

MATH_PAGES = {'02_vqgan.html'}

@pytest.mark.parametrize('page', ['index.html', '09_small_data.html', '02_vqgan.html'])
def test_site_page(browser, site, page):
    base, out = site
    browser.get(base + page)
    wait_for(lambda: browser.execute_script("return document.readyState") == 'complete', 60, f"{page} to load")
    wait_for(lambda: browser.execute_script("return Array.from(document.images).every(i => i.complete)"), 60,
             f"the images of {page}")
    imgs = browser.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
    broken = [s for s, w in imgs if not w]
    assert not broken, f"{page}: images that did not load: {broken[:5]}"
    if page != 'index.html': assert imgs, f"{page} shows no picture"
    links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    internal = sorted({l.split('#')[0] for l in links if l.startswith(base)})
    bad = [l for l in internal if not _link_ok(l)]
    assert not bad, f"{page}: broken links {bad}"
    if page == 'index.html':                                   # every chapter is linked from the index
        chapters = {p.name for p in out.glob('[0-9][0-9]_*.html')}
        assert chapters <= {l[len(base):] for l in internal}, f"chapters not linked from the index: {chapters - set(internal)}"
    wait_for(lambda: browser.execute_script("return !!(window.MathJax && MathJax.isReady)"), 60,
             f"the site's own MathJax to load on {page}")
    if page in MATH_PAGES:                                     # formulas typeset, none in error
        n = wait_for(lambda: browser.execute_script("return MathJax.Hub.getAllJax().length"), 60, f"formulas on {page}")
        assert not browser.execute_script("return document.querySelectorAll('.MathJax_Error, merror').length"), \
            f"{page}: MathJax could not typeset some formulas"
        print(f"{page}: {n} formulas typeset")
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, 'site_' + page[:-5])

# ---------------------------------------------------------------------------------------------------------------
# JupyterLab
@contextlib.contextmanager
def jupyter_lab(root: Path, tmp: Path):
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp / 'runtime'), 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1',
           'OMP_WAIT_POLICY': 'PASSIVE', 'PYTHONHASHSEED': '0'}
    env.pop('MPLBACKEND', None); env.pop('IN_TEST', None)     # the kernel draws inline, as for a student
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', '--ServerApp.port_retries=0',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}', f'--LabApp.workspaces_dir={tmp / "ws"}',
           '--LabApp.expose_app_in_browser=True', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')   # CI containers run as root
    settings = tmp / 'settings' / '@jupyterlab' / 'apputils-extension'            # no "news?" pop-up over the page
    settings.mkdir(parents=True, exist_ok=True)
    (settings / 'notification.jupyterlab-settings').write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    cmd.append(f'--LabApp.user_settings_dir={tmp / "settings"}')
    log = open(tmp / 'jupyter.log', 'w')
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        def up():
            if proc.poll() is not None: raise AssertionError(f"jupyter lab exited: {(tmp / 'jupyter.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=5) as r: return r.status == 200
            except OSError: return False
        wait_for(up, 90, "jupyter lab to start")
        yield base, token
    finally:
        with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGTERM)   # the server and its kernels
        try: proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()

JS_STATE = """
const app = window.jupyterapp; if (!app) return null;
const w = app.shell.currentWidget; if (!w || !w.content || !w.sessionContext) return null;
const k = w.sessionContext.session && w.sessionContext.session.kernel;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
w.content.widgets.forEach((c, i) => { if (c.model.type !== 'code') return;
  c.model.outputs.toJSON().forEach(x => { if (x.output_type === 'error')
    errors.push('cell ' + i + ' (' + c.model.sharedModel.getSource().split(String.fromCharCode(10))[0].slice(0, 60) + '): ' + x.ename + ': ' + x.evalue); }); });
return {kernel: k ? k.status : null, running: cells.filter(c => (c.promptNode && c.promptNode.textContent.includes('*'))).length,
        ran: cells.filter(c => c.model.executionCount !== null).length, cells: cells.length, errors: errors};
"""
JS_WIDGET_IMG = """
const outs = Array.from(document.querySelectorAll('.widget-output, .jupyter-widgets-output-area'));
for (const o of outs) { const im = o.querySelector('img'); if (im && im.complete && im.naturalWidth > 0) return im.src; }
return null;
"""

def test_jupyterlab_chapter_07(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from paella_nb.cli import copy_course
    t0 = time.time()
    root = tmp_path / 'course'
    copy_course(root, quiet=True)
    assert (root / 'nbs' / '07_sampling.ipynb').exists()
    with jupyter_lab(root, tmp_path) as (base, token):
        browser.get(f'{base}/lab/tree/nbs/07_sampling.ipynb?token={token}')
        wait_for(lambda: (s := browser.execute_script(JS_STATE)) and s['kernel'] == 'idle', 120,
                 "the notebook to open with an idle kernel", every=1)
        browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        time.sleep(2)
        def done():
            s = browser.execute_script(JS_STATE)
            if s and s['errors']: raise AssertionError(f"chapter 07 shows an error in JupyterLab: {s['errors']}")
            return s and s['kernel'] == 'idle' and s['running'] == 0 and s['ran'] > 0 and s
        s = wait_for(done, 900, "Run All of chapter 07 to finish", every=2)
        wait_for(lambda: not browser.execute_script(JS_STATE)['errors'], 1, "no error")   # once more, after the end
        first = wait_for(lambda: browser.execute_script(JS_WIDGET_IMG), 60, "the sampler widget's images")
        prompt = browser.find_element(By.CSS_SELECTOR, '.widget-text input[placeholder]')
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", prompt)
        shot(browser, 'lab_07_sampler_before')
        prompt.click(); prompt.send_keys(Keys.CONTROL, 'a'); prompt.send_keys('a small green triangle at the bottom right')
        button = next(b for b in browser.find_elements(By.CSS_SELECTOR, 'button.jupyter-button') if 'Generate' in b.text)
        button.click()
        second = wait_for(lambda: (src := browser.execute_script(JS_WIDGET_IMG)) and src != first and src, 120,
                          "the widget's image to change after Generate")
        assert second != first
        time.sleep(1)
        el = browser.find_element(By.CSS_SELECTOR, '.widget-output, .jupyter-widgets-output-area')
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        shot(browser, 'lab_07_sampler_after')
        ui = browser.execute_script("return arguments[0].closest('.widget-vbox')", button)
        SHOTS.mkdir(parents=True, exist_ok=True)
        ui.screenshot(str(SHOTS / 'lab_07_sampler_widget.png'))           # the widget alone (the README's picture)
        print(f"screenshot: {(SHOTS / 'lab_07_sampler_widget.png').relative_to(ROOT)}")
        s = browser.execute_script(JS_STATE)
        assert not s['errors'], s['errors']
    print(f"JupyterLab chapter 07: {s['ran']} of {s['cells']} code cells ran, test took {time.time() - t0:.0f} s")
