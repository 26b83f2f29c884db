import os, sys, tempfile
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')
# keep generated data sets out of the user's home during tests
os.environ.setdefault('PAELLA_NB_CACHE', tempfile.mkdtemp(prefix='paella_nb_test_cache_'))

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture
def repo_root(): return ROOT
