"Print one of the README's two copy-paste commands (marked `<!-- cmd:NAME -->` ... `<!-- /cmd -->`)."
import re, sys
from pathlib import Path
name = sys.argv[1]
text = Path(__file__).resolve().parent.parent.joinpath('README.md').read_text()
m = re.search(rf'<!-- cmd:{name} -->\s*```(?:bash|sh)?\n(.*?)```\s*<!-- /cmd -->', text, re.S)
if not m: sys.exit(f"README.md has no block marked <!-- cmd:{name} --> ... <!-- /cmd -->")
lines = [l for l in m.group(1).strip().splitlines() if l.strip() and not l.startswith('#')]
# the README's command installs into the current environment; CI has already made and activated a fresh venv
print(' && '.join(lines))
