"""Build the course website: `python tools/build_site.py [--out _site]`, then open `_site/index.html` in a browser.

One page per notebook, in course order: `nbs/index.ipynb` (the README: its chapter table links every chapter)
becomes `index.html`, each chapter `nbs/NN_name.ipynb` becomes `NN_name.html`, with links to the previous and next
chapter and to the index at the top and bottom of each page. Pages show the notebooks *as saved*: nothing is run,
so refresh the outputs first (`python tools/refresh_outputs.py`).

Why these tools
- **nbconvert's `lab` template** renders each notebook as JupyterLab shows it (the same CSS, syntax-highlighted code
  cells, outputs). nbconvert is Jupyter's own converter, maintained with JupyterLab, installed offline from PyPI
  (JupyterLab already depends on it). nbdev's own site builder, Quarto, cannot be installed offline (its PyPI
  package downloads a binary).
- **Formulas are rendered offline** by MathJax 2.7, copied into `_site/mathjax/` from the `jupyter-server-mathjax`
  PyPI package (the MathJax that Jupyter Server serves; MathJax 2 is the version nbconvert's template configures).
  The site needs no network: open it from `file://` or any static server.
- Output pictures are written as PNG files beside each page (`NN_name_files/`), not inlined as base64, so the
  pages stay light; images that markdown cells reference (`![...](images/x.png)`) are copied too.
- Code cells are shown as nbdev's own sites show them: without their `#|` directive lines; `#| hide` cells and
  cells holding only directives (`#| default_exp`) are left out.

A picture that a page needs but cannot be found (a markdown image whose file is missing, an output without its
file) stops the build with an error naming the notebook and the image.
"""
import argparse, html, re, shutil, sys, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
MATHJAX_URL = 'mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe'

class SiteError(Exception): pass

def pages(nbs: Path = NBS) -> list[Path]:
    "The notebooks of the site, in course order: the index, then every chapter."
    return [nbs / 'index.ipynb'] + sorted(nbs.glob('[0-9][0-9]_*.ipynb'))

def page_name(p: Path) -> str: return 'index.html' if p.stem == 'index' else p.stem + '.html'

def title_of(nb) -> str:
    for c in nb.cells:
        if c.cell_type == 'markdown':
            m = re.search(r'^#\s+(.+)$', c.source, re.M)
            if m: return m.group(1).strip()
    return ''

_MD_IMG = re.compile(r'!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)|<img[^>]+src=["\']([^"\']+)["\']')

def copy_markdown_images(nb, src: Path, out: Path):
    "Copy the local images that markdown cells show into the site (same relative path); a missing one is an error."
    for i, c in enumerate(nb.cells):
        if c.cell_type != 'markdown': continue
        for m in _MD_IMG.finditer(c.source):
            ref = m.group(1) or m.group(2)
            if re.match(r'^(https?:|data:|attachment:|mailto:)', ref): continue
            f = (src.parent / ref).resolve()
            if not f.is_file():
                raise SiteError(f"{_rel(src)}: markdown cell {i} shows the image {ref!r}, "
                                f"but {f} does not exist")
            dest = out / ref
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)

def without_directives(cell):
    "A code cell as nbdev's own docs show it: no `#|` lines; a `#| hide` cell, or one with nothing left, is dropped."
    if cell.cell_type != 'code': return cell
    lines = cell.source.splitlines()
    if any(re.match(r'#\|\s*hide\b', l) for l in lines): return None
    kept = [l for l in lines if not l.startswith('#|')]
    if not ''.join(kept).strip() and not cell.get('outputs'): return None
    cell.source = '\n'.join(kept).strip('\n')
    return cell

def nav(order: list[Path], i: int) -> str:
    "The links to the index and the previous and next chapters."
    def link(j, label):
        if j < 0 or j >= len(order): return f'<span class="pn-off">{label}</span>'
        p = order[j]; name = 'course index' if p.stem == 'index' else p.stem
        return f'<a href="{page_name(p)}">{label} {html.escape(name)}</a>'
    return (f'<nav class="pn-nav">{link(i - 1, "← previous:")} · <a href="index.html">index</a> · '
            f'{link(i + 1, "next:")}</nav>')

CSS = """<link rel="icon" href="data:,">
<style>
.pn-nav { font: 14px/1.6 system-ui, sans-serif; padding: 8px 16px; margin: 0 auto; max-width: 1100px;
          border-bottom: 1px solid #ddd; }
.pn-nav a { text-decoration: none; } .pn-off { color: #999; }
.pn-bottom { border-top: 1px solid #ddd; border-bottom: none; margin-top: 2em; }
.jp-Notebook { max-width: 1100px; margin: 0 auto; }
</style>"""

def link_chapters(body: str, names: set) -> str:
    "Links in markdown to `X.ipynb` go to `X.html`; `NN_name` in the index's table becomes a link to its page."
    body = re.sub(r'href="(?:\./)?([\w\-]+)\.ipynb(#[^"]*)?"', lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"'
                  if m.group(1) in names else m.group(0), body)
    return re.sub(r'<td><code>(\d\d_\w+)</code></td>', lambda m: f'<td><a href="{m.group(1)}.html"><code>{m.group(1)}'
                  f'</code></a></td>' if m.group(1) in names else m.group(0), body)

def check_images(page: Path, out: Path, src: Path):
    "Every `<img src>` of a written page is a data URI, a web address, or a file in the site."
    for ref in re.findall(r'<img[^>]+src="([^"]+)"', page.read_text(encoding='utf-8')):
        if re.match(r'^(https?:|data:)', ref): continue
        f = out / html.unescape(ref)
        if not f.is_file():
            raise SiteError(f"{_rel(src)}: its page {page.name} shows the image {ref!r}, which is missing from {out}")
        if f.suffix.lower() == '.png' and not f.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n':
            raise SiteError(f"{_rel(src)}: the image {ref!r} of its page {page.name} is not a readable PNG "
                            f"(an empty or damaged saved output?): refresh the notebook's outputs")

def copy_mathjax(out: Path):
    try: import jupyter_server_mathjax
    except ImportError:
        raise SiteError("MathJax is missing: pip install jupyter-server-mathjax (it is in paella_nb's [dev] extra)") from None
    static = Path(jupyter_server_mathjax.__file__).parent / 'static'
    shutil.copytree(static, out / 'mathjax', ignore=shutil.ignore_patterns('localization'), dirs_exist_ok=True)

def _rel(p: Path) -> str:
    try: return str(p.relative_to(ROOT))
    except ValueError: return str(p)

def build(out: Path, nbs: Path = NBS) -> dict:
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.writers import FilesWriter
    t0 = time.time()
    order = pages(Path(nbs))
    names = {p.stem for p in order}
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    copy_mathjax(out)
    exporter = HTMLExporter(template_name='lab', mathjax_url=MATHJAX_URL, embed_images=False, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    exporter.register_preprocessor('nbconvert.preprocessors.ExtractOutputPreprocessor', enabled=True)
    writer = FilesWriter(build_directory=str(out))
    n_img = 0
    warnings.filterwarnings('ignore', message='Cell is missing an id field')
    for i, p in enumerate(order):
        nb = nbformat.read(p, as_version=4)
        copy_markdown_images(nb, p, out)
        nb.cells = [c for c in map(without_directives, nb.cells) if c is not None]
        resources = {'metadata': {'name': p.stem, 'path': str(p.parent)}, 'output_files_dir': f'{p.stem}_files'}
        body, resources = exporter.from_notebook_node(nb, resources=resources)
        title = title_of(nb) or p.stem
        body = re.sub(r'<title>.*?</title>', f'<title>{html.escape(title)} · paella_nb</title>', body, count=1, flags=re.S)
        body = re.sub(r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded", async \(\) => \{.*?mermaid.*?</script>',
                      '', body, flags=re.S)                           # the mermaid loader (a CDN import; no diagrams here)
        body = re.sub(r'<script src="https://[^"]*require[^"]*"></script>', '', body)   # require.js: no widgets here
        body = body.replace('</head>', CSS + '\n</head>', 1)
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + '\n' + nav(order, i), body, count=1)
        body = body.replace('</body>', nav(order, i).replace('pn-nav', 'pn-nav pn-bottom') + '\n</body>', 1)
        body = link_chapters(body, names)
        writer.write(body, resources, notebook_name=page_name(p)[:-5])
        n_img += sum(1 for k in resources.get('outputs', {}) if k.endswith('.png'))
        check_images(out / page_name(p), out, p)
    (out / '.nojekyll').write_text('')
    return dict(pages=len(order), images=n_img, seconds=time.time() - t0, out=out)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=str(ROOT / '_site'), help='the site folder (replaced)')
    args = ap.parse_args(argv)
    try: r = build(Path(args.out).resolve())
    except SiteError as e: sys.exit(f"build_site: {e}")
    print(f"built {r['pages']} pages with {r['images']} output images in {r['seconds']:.0f} s: open {r['out'] / 'index.html'}")

if __name__ == '__main__': main()
