"""The course website builder (`tools/build_site.py`) on small notebooks: pages in course order with links between
them, output pictures written as files, and a clear error for a picture that is missing. (The real site, in a real
browser: tests/test_browser.py.)"""
import base64, io, re, sys
from pathlib import Path
import nbformat, pytest
from nbformat.v4 import new_notebook, new_markdown_cell, new_code_cell, new_output

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import build_site

def _png() -> str:
    from PIL import Image
    buf = io.BytesIO(); Image.new('RGB', (4, 3), 'red').save(buf, format='PNG')
    return base64.b64encode(buf.getvalue()).decode()

def _course(tmp_path, index_md='# Course\n\n| chapter |\n|---|\n| `01_one` |\n| `02_two` |'):
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    nbformat.write(new_notebook(cells=[new_markdown_cell(index_md)]), nbs / 'index.ipynb')
    pic = new_code_cell('show()', outputs=[new_output('display_data', data={'image/png': _png(), 'text/plain': 'fig'})])
    nbformat.write(new_notebook(cells=[new_markdown_cell('# One\n\n$x^2$ and [two](02_two.ipynb)'), pic]), nbs / '01_one.ipynb')
    nbformat.write(new_notebook(cells=[new_markdown_cell('# Two'), new_code_cell('#| export\nanswer = 1 + 1'), new_code_cell('#| hide\nsecret = 1')]), nbs / '02_two.ipynb')
    return nbs

def test_pages_in_course_order_with_links(tmp_path):
    nbs = _course(tmp_path)
    r = build_site.build(tmp_path / '_site', nbs)
    out = tmp_path / '_site'
    assert r['pages'] == 3 and r['images'] == 1
    assert [p.name for p in build_site.pages(nbs)] == ['index.ipynb', '01_one.ipynb', '02_two.ipynb']
    index, one, two = ((out / f).read_text() for f in ('index.html', '01_one.html', '02_two.html'))
    assert 'href="01_one.html"' in index and 'href="02_two.html"' in index          # the chapter table links
    assert 'href="index.html"' in one and 'href="02_two.html"' in one and 'href="index.html"' in two
    assert '<title>One · paella_nb</title>' in one
    assert 'answer' in two and '#| export' not in two and 'secret' not in two          # directives and hidden cells out
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', one)
    assert imgs and all((out / i).read_bytes().startswith(b'\x89PNG') for i in imgs)   # pictures as files
    assert 'mathjax/MathJax.js' in one and (out / 'mathjax' / 'MathJax.js').exists()    # formulas offline
    assert 'cdnjs.cloudflare.com' not in one and 'require.min.js' not in one             # nothing from the web

def test_missing_markdown_image_is_a_clear_error(tmp_path):
    nbs = _course(tmp_path)
    nbformat.write(new_notebook(cells=[new_markdown_cell('# Two\n\n![the sampler](images/nope.png)')]), nbs / '02_two.ipynb')
    with pytest.raises(build_site.SiteError, match=r"02_two.ipynb: markdown cell 0 shows the image 'images/nope.png'"):
        build_site.build(tmp_path / '_site', nbs)

def test_markdown_image_is_copied(tmp_path):
    nbs = _course(tmp_path)
    (nbs / 'images').mkdir(); (nbs / 'images' / 'pic.png').write_bytes(base64.b64decode(_png()))
    nbformat.write(new_notebook(cells=[new_markdown_cell('# Two\n\n![a picture](images/pic.png)')]), nbs / '02_two.ipynb')
    build_site.build(tmp_path / '_site', nbs)
    assert (tmp_path / '_site' / 'images' / 'pic.png').exists()

def test_damaged_output_image_is_a_clear_error(tmp_path):
    nbs = _course(tmp_path)
    bad = new_code_cell('show()', outputs=[new_output('display_data', data={'image/png': base64.b64encode(b'not a png').decode()})])
    nbformat.write(new_notebook(cells=[new_markdown_cell('# Two'), bad]), nbs / '02_two.ipynb')
    with pytest.raises(build_site.SiteError, match='02_two.ipynb: the image .* is not a readable PNG'):
        build_site.build(tmp_path / '_site', nbs)
