"""Packaging for paella_nb, driven by settings.ini (nbdev 2 layout, without pkg_resources).

Besides the exported package, the wheel carries the course itself (nbs/ and data/) under
`paella_nb/_course/`, so that `pip install paella_nb && paella_nb course DIR` gives a student the notebooks.
"""
import shutil
from configparser import ConfigParser
from pathlib import Path
import setuptools
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
config = ConfigParser(delimiters=['='])
config.read(ROOT/'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

licenses = {'apache2': 'Apache-2.0'}   # an SPDX expression (license classifiers are deprecated)
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()
lic = licenses[cfg['license']]
min_python = cfg['min_python']
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
course_requirements = cfg.get('course_requirements', '').split()   # `pip install paella_nb[course]`: JupyterLab to follow the course
# "fastcore>=1.12.3,<2" is one requirement: settings.ini separates requirements by spaces only
scripts = [s.strip() for s in cfg.get('console_scripts', '').split() if s.strip()]


class BuildPyWithCourse(build_py):
    "Copy the course notebooks and data into the built package as `paella_nb/_course`."
    def run(self):
        super().run()
        dest = Path(self.build_lib)/cfg['lib_path']/'_course'
        ignore = shutil.ignore_patterns('.ipynb_checkpoints', '__pycache__', 'cache', '_proc', '*.pyc')
        for name in ('nbs', 'data'):
            src = ROOT/name
            if src.exists():
                if (dest/name).exists(): shutil.rmtree(dest/name)
                shutil.copytree(src, dest/name, ignore=ignore)


setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    license=lic,
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()] + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'course': course_requirements},
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires='>=' + min_python,
    long_description=(ROOT/'README.md').read_text(encoding='utf-8') if (ROOT/'README.md').exists() else cfg['description'],
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': scripts, 'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
    cmdclass={'build_py': BuildPyWithCourse},
    author=cfg['author'], author_email=cfg['author_email'], description=cfg['description'],
    keywords=cfg['keywords'],
)
