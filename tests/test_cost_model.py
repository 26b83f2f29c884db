"""Chapter 13 (paella_nb.cost_model): FLOPs and memory counted on the meta device; the GPU bench script runs."""
import importlib.util
from pathlib import Path

import pytest

from paella_nb.cost_model import model_flops, activation_memory, cost_table, implied_mfu

ROOT = Path(__file__).resolve().parent.parent


def test_cost_model():
    mf = model_flops(None, 64, 128)
    assert mf['params'] == 1_008_350_592
    assert 500e9 < mf['forward'] < 560e9                                 # 531 GFLOP per 256 px image at L = 128
    am = activation_memory(None, 64, 128)
    assert am['checkpointed'] < am['full'] / 5 and 2 * 2**30 < am['full'] < 4 * 2**30
    rows = cost_table(3 * mf['forward'], mfus=(0.4,))
    assert rows[0]['gpu_days'] == pytest.approx(rows[0]['days'] * 128)
    assert 0.03 < implied_mfu(3 * mf['forward'], 2048, 1_300_000, 128, 21) < 0.1


def test_bench_script_smoke():
    spec = importlib.util.spec_from_file_location('full_scale_gpu', ROOT/'bench'/'full_scale_gpu.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    res = mod.main(['--smoke', '--mode', 'plain', '--micro', '2'])
    assert res[0]['micro_batch'] == 2 and res[0]['step_s'] > 0
