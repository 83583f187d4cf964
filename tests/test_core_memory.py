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
    assert core._linear is not None and all(tile.held_matrix is None for tile in core._tiles)
    before = core @ X
    records = core.adc_inputs(X.T)                         # the profiling hook reads the tiles: rebuilt on demand
    assert records and all(tile.held_matrix is not None for tile in core._tiles)
    np.testing.assert_array_equal(core @ X, before)
    reference = AnalogCore(W, InferenceConfig.ideal().replace(error_model="generic", alpha_error=0.0), bias=np.linspace(-1, 1, 24),
                           name="layer").program(2)
    np.testing.assert_array_equal(core._tiles[0].matrix, reference._tiles[0].matrix)

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
    for a, b in zip(blocked._tiles, whole._tiles): np.testing.assert_array_equal(a.matrix, b.matrix)
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


SLICED = {   # the slice-by-slice programming path (issue 29 item 6): every mapping, tiling, noise layout and device model
    "balanced-difference": dict(weight_bits=8, nslices=3, error_model="generic", alpha_error=0.05, nrows_max=7, ncols_max=5),
    "balanced-pair-noise": dict(weight_bits=8, nslices=2, error_model="generic", alpha_error=0.05, error_dependence="proportional",
                                subtract_current_in_xbar=False, noise_model="generic", alpha_noise=0.02, noise_dependence="proportional"),
    "difference-noise-uniform": dict(weight_bits=7, nslices=6, error_model="generic", alpha_error=0.05, error_distribution="uniform",
                                     noise_model="generic", alpha_noise=0.03, nrows_max=16),
    "pair-exact-noise": dict(weight_bits=8, nslices=2, error_model="generic", alpha_error=0.05, noise_model="generic", alpha_noise=0.03,
                             read_noise_method="exact"),
    "offset-unit-columns": dict(weight_bits=6, style="OFFSET", nslices=3, digital_offset=False, error_model="generic",
                                alpha_error=0.03, noise_model="generic", alpha_noise=0.01, nrows_max=16, ncols_max=10),
    "offset-digital": dict(weight_bits=8, style="OFFSET", nslices=4, error_model="generic", alpha_error=0.03),
}


def _with_devices():
    from crosssim_nb.device_models import DEVICE_PRESETS, device_config
    return {f"device-{name}": device_config(name, InferenceConfig(weight_bits=8, nslices=2, nrows_max=16)) for name in DEVICE_PRESETS}


@pytest.mark.parametrize("name", list(SLICED) + list(_with_devices()))
def test_slice_by_slice_programming_equals_the_whole_array(name, monkeypatch):
    "One slice, part and row block at a time gives the read matrices, spreads, unit columns and outputs of one whole-array programming, bit for bit."
    import crosssim_nb.core as core_module
    config = _with_devices()[name] if name.startswith("device-") else InferenceConfig(**SLICED[name])
    matrix = np.random.default_rng(40).normal(size=(23, 41)).astype(np.float32)
    x = np.random.default_rng(41).uniform(-1, 1, size=(5, 41)).astype(np.float32)
    monkeypatch.setattr(core_module, "_SLICE_BLOCK", 64)                    # a few rows per block
    sliced = AnalogCore(matrix, config, bias=np.linspace(-1, 1, 23), name="s").program(2)
    assert sliced._programs_by_slices()
    monkeypatch.setattr(AnalogCore, "_programs_by_slices", lambda self: False)
    whole = AnalogCore(matrix, config, bias=np.linspace(-1, 1, 23), name="s").program(2)
    for a, b in zip(sliced._tiles, whole._tiles):
        np.testing.assert_array_equal(a.matrix, b.matrix)
        assert (a.spread is None) == (b.spread is None)
        if a.spread is not None: np.testing.assert_array_equal(a.spread, b.spread)
    if whole.reference is not None: np.testing.assert_array_equal(sliced.reference, whole.reference)
    np.testing.assert_array_equal(sliced.apply(x), whole.apply(x))


@pytest.mark.parametrize("settings", [dict(weight_bits=24, style="OFFSET", nslices=24),
                                      dict(weight_bits=24, nslices=23, adc_bits=8, adc_range_option="MAX"),
                                      dict(weight_bits=24, style="OFFSET", nslices=24, digital_offset=False, adc_bits=8, adc_range_option="MAX", nrows_max=300)])
def test_many_weight_slices_stay_within_40x_the_matrix(settings):
    """23-24 weight slices with programming errors (was 366x the matrix's float32 bytes: 3.3 GB for a 9 MB matrix):
    the peak of programming and one read stays within 40x, and within the core's own estimate made before programming."""
    import tracemalloc
    matrix = np.random.default_rng(42).normal(size=(700, 700)).astype(np.float32)
    x = np.random.default_rng(43).uniform(-1, 1, (16, 700)).astype(np.float32)
    config = InferenceConfig(error_model="generic", alpha_error=0.01, **settings)
    tracemalloc.start()
    core = AnalogCore(matrix, config, name="sliced")
    core.apply(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak <= 40 * matrix.nbytes, peak / matrix.nbytes
    assert peak <= core.memory_estimate(), (peak, core.memory_estimate())


def test_a_layer_that_cannot_fit_is_refused_with_the_number(monkeypatch):
    "A core whose estimate exceeds the available memory is refused before programming, naming the bytes and the settings."
    import crosssim_nb.core as core_module
    config = InferenceConfig(weight_bits=24, nslices=23, error_model="generic", alpha_error=0.01)
    matrix = np.zeros((3000, 3000), dtype=np.float32)
    estimate = 3000 * 3000 * 23 * 4 + 3000 * 3000 * 20 + 8 * (1 << 18) * 8 + 16 * (1 << 23)   # read matrix + one slice part + buffers
    monkeypatch.setattr(core_module, "available_memory", lambda: 500 << 20)
    with pytest.raises(ValueError, match=rf"AnalogCore 'huge': programming and holding this 3000x3000 layer needs about "
                                         rf"{estimate / 1e9:.3g} GB \(nslices=23 weight slices\), more than the 0.524 GB"):
        AnalogCore(matrix, config, name="huge")
