"""AnalogCore memory (issue 15 §3): no float64 conductances kept, the caller's matrix shared read-only, linear cores folded.

`tests/data/core_programmed_run2.npz` holds what the cores stored (`programmed`, `reference`, `programmed_weights()`,
outputs) for fixed seeds before the conductances stopped being stored: recomputing them must give the same numbers."""
from pathlib import Path
import numpy as np
import pytest
from crosssim_nb import AnalogCore, InferenceConfig

STORED = np.load(Path(__file__).parent / "data" / "core_programmed_run2.npz", allow_pickle=False)
W = np.random.default_rng(7).normal(size=(24, 40)).astype(np.float32)
X = np.random.default_rng(8).uniform(-1, 1, size=(40, 5))
CASES = {
    "balanced": dict(weight_bits=8, error_model="generic", alpha_error=0.05, seed=3),
    "offset": dict(weight_bits=6, style="OFFSET", digital_offset=False, error_model="generic", alpha_error=0.03, nrows_max=16, seed=5),
    "sliced": dict(weight_bits=8, nslices=2, error_model="generic", alpha_error=0.02, error_dependence="proportional", seed=11),
    "ideal8": dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=16),
    "ideal": None,
}

def make(name, matrix=W):
    config = InferenceConfig.ideal() if CASES[name] is None else InferenceConfig(**CASES[name])
    return AnalogCore(matrix, config, bias=np.linspace(-1, 1, 24), name="layer").program(2)

@pytest.mark.parametrize("name", list(CASES))
def test_fixed_seed_results_unchanged(name):
    "The same seed and run give the outputs the cores gave when they stored their conductances."
    np.testing.assert_array_equal(make(name) @ X, STORED[f"{name}_outputs"])

@pytest.mark.parametrize("name", ["balanced", "offset", "sliced"])
def test_programmed_recomputed_identically(name):
    "`programmed` is recomputed from the run's seed: twice the same array, equal to what was stored, float64."
    core = make(name)
    first, second = core.programmed, core.programmed
    assert first.dtype == np.float64 and first is not second
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, STORED[name])
    np.testing.assert_array_equal(core.programmed_weights(), STORED[f"{name}_weights"])
    if f"{name}_reference" in STORED.files: np.testing.assert_array_equal(core.reference, STORED[f"{name}_reference"])
    core.program(3); other = core.programmed
    core.program(2); np.testing.assert_array_equal(core.programmed, STORED[name])   # back to run 2: the same devices
    assert not np.array_equal(other, STORED[name])

def test_core_holds_no_float64_device_arrays():
    "Nothing as big as the devices is kept in float64: the programmed conductances are a property, not an attribute."
    core = make("balanced")
    held = [v for v in vars(core).values() if isinstance(v, np.ndarray) and v.dtype == np.float64 and v.size >= W.size]
    assert held == [] and "programmed" not in vars(core)

@pytest.mark.parametrize("name", list(CASES))
def test_matrix_shared_read_only_and_never_written(name):
    "A float32 matrix is shared, not copied; the core reads it through a read-only view and never writes to it."
    matrix = W.copy()
    core = make(name, matrix)
    assert np.shares_memory(core.matrix, matrix) and not core.matrix.flags.writeable
    assert matrix.flags.writeable                          # the caller's own array keeps its flags
    core @ X; core.program(5); core @ X; core.programmed_weights()
    np.testing.assert_array_equal(matrix, W)
    with pytest.raises(ValueError): core.matrix[0, 0] = 1.0

def test_linear_core_keeps_only_the_folded_map():
    "An ideal core reads one folded matrix; its tile matrices are rebuilt, identical, only when a read needs them."
    core = make("ideal")
    assert core._linear is not None and all("matrix" not in tile for tile in core._tiles)
    before = core @ X
    records = core.adc_inputs(X.T)                         # the profiling hook reads the tiles: rebuilt on demand
    assert records and all("matrix" in tile for tile in core._tiles)
    np.testing.assert_array_equal(core @ X, before)
    reference = AnalogCore(W, InferenceConfig.ideal().replace(error_model="generic", alpha_error=0.0), bias=np.linspace(-1, 1, 24),
                           name="layer").program(2)
    np.testing.assert_array_equal(core._tiles[0]["matrix"], reference._tiles[0]["matrix"])

@pytest.mark.parametrize("settings", [dict(), dict(style="OFFSET", digital_offset=False), dict(nslices=2, weight_bits=8),
                                      dict(style="BALANCED", subtract_current_in_xbar=False, nrows_max=7, ncols_max=5),
                                      dict(digital_bias=False)])
def test_row_blocks_equal_whole_array(settings, monkeypatch):
    "Programming in row blocks (nothing random) gives bit-identical read matrices and outputs to one block."
    import crosssim_nb.core as core_module
    config = InferenceConfig(weight_bits=settings.pop("weight_bits", 6), dac_bits=8, adc_bits=0, **settings)
    matrix = np.random.default_rng(1).normal(size=(30, 50)).astype(np.float32)
    x = np.random.default_rng(2).uniform(-1, 1, size=(50, 4))
    whole = AnalogCore(matrix, config, bias=np.linspace(-1, 1, 30), name="x")
    monkeypatch.setattr(core_module, "_PROGRAM_BLOCK", 64)                  # a few rows per block
    blocked = AnalogCore(matrix, config, bias=np.linspace(-1, 1, 30), name="x")
    np.testing.assert_array_equal(blocked @ x, whole @ x)
    for a, b in zip(blocked._tiles, whole._tiles): np.testing.assert_array_equal(a["matrix"], b["matrix"])
    np.testing.assert_array_equal(blocked._linear[0], whole._linear[0])
    folded_whole = blocked._linear_map()                  # the whole-tile fold of the rebuilt tiles: the same map and bias
    np.testing.assert_array_equal(folded_whole[0], blocked._linear[0])
    if blocked._linear[1] is not None: np.testing.assert_array_equal(folded_whole[1], blocked._linear[1])


def test_numba_is_loaded_only_with_draws():
    "numba (the keyed-noise kernels' compiler) costs ~100 MB of resident memory once loaded: an ideal or 8-bit run without read"
    " noise or stochastic rounding never imports it (the memory targets of small models depend on it); a noisy read does."
    import subprocess, sys
    script = ("import sys, numpy as np\n"
              "from crosssim_nb import InferenceConfig, AnalogCore\n"
              "x = np.random.default_rng(0).uniform(-1, 1, (300, 40)).astype(np.float32)\n"
              "for config in (InferenceConfig.ideal(), InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option='MAX')):\n"
              "    AnalogCore(np.ones((20, 40)), config).apply(x)\n"
              "print('quiet', 'numba' in sys.modules)\n"
              "AnalogCore(np.ones((20, 40)), InferenceConfig(noise_model='generic', alpha_noise=0.01, adc_bits=0)).apply(x)\n"
              "print('noisy', 'numba' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "quiet False" in done.stdout and "noisy True" in done.stdout, done.stdout
