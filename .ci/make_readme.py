"""Write README.md from nbs/index.ipynb (nbdev's `nbdev_readme` needs Quarto, which cannot be installed offline).

Markdown cells are copied as they are (an image path `images/x.png`, relative to nbs/, becomes `nbs/images/x.png`);
code cells become ```python blocks. `--check` exits 1 if README.md is stale.
"""
import json, re, sys
from pathlib import Path
root = Path(__file__).resolve().parent.parent
nb = json.loads((root/'nbs'/'index.ipynb').read_text())
parts = []
for c in nb['cells']:
    src = ''.join(c['source']).strip()
    if not src or src.startswith('#|'): continue
    if c['cell_type'] == 'markdown': src = re.sub(r'\]\((images/[^)\s]+)\)', r'](nbs/\1)', src)   # pictures beside the notebook
    parts.append(src if c['cell_type'] == 'markdown' else f'```python\n{src}\n```')
text = '<!-- generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file -->\n\n' + '\n\n'.join(parts) + '\n'
readme = root/'README.md'
if '--check' in sys.argv:
    if not readme.exists() or readme.read_text() != text:
        sys.exit("README.md is out of date with nbs/index.ipynb: run `python .ci/make_readme.py` and commit.")
else:
    readme.write_text(text)
