"""AnalogCore against independent references: the worked examples, float/integer math, analytic variances."""
import json, math
from pathlib import Path
import numpy as np
import pytest
from scipy import stats
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.backend import gpu_available

DATA = Path(__file__).parent / "data" / "analogcore"
STYLES = [dict(style="BALANCED"), dict(style="BALANCED", balanced_style="TWO_SIDED"),
          dict(style="BALANCED", subtract_current_in_xbar=False), dict(style="OFFSET"),
          dict(style="OFFSET", digital_offset=False)]

def relative_error(got, want): return float(np.abs(got - want).max() / np.abs(want).max())

@pytest.mark.parametrize("case", sorted(p.name for p in DATA.glob("*.npz")))
def test_worked_examples(case):
    "The units of nbs/21_units_and_physics.ipynb pinned to numbers (worked examples in tests/data/analogcore)."
    z = np.load(DATA / case, allow_pickle=False)
    settings = json.loads(str(z["our_config"]))
    input_range = settings.pop("input_range")
    core = AnalogCore(z["W"], InferenceConfig(**settings), input_range=input_range)
    assert relative_error(core @ z["X"], z["Y_design"]) <= 1e-5
    if settings["adc_bits"]:   # the ADC range the example's arrays used
        np.testing.assert_allclose(core.tile_limits(0)[:, 0], z["adc_limits"][0])

@pytest.mark.parametrize("style", STYLES, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("tiles", [(0, 0), (64, 16), (50, 37), (201, 7), (1, 1)])
def test_ideal_equals_float(style, tiles):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(37, 201)).astype(np.float32)
    x = rng.uniform(-2, 2, size=(201, 9)).astype(np.float32)
    core = AnalogCore(W, InferenceConfig.ideal(nrows_max=tiles[0], ncols_max=tiles[1], **style), input_range=(-2, 2))
    assert relative_error(core @ x, W @ x) < 2e-6
    x_pos = np.abs(x)
    core = AnalogCore(W, InferenceConfig.ideal(nrows_max=tiles[0], **style), input_range=(0, 2))
    assert relative_error(core @ x_pos, W @ x_pos) < 2e-6

def test_vector_and_matrix_shapes():
    W = np.arange(6.0).reshape(2, 3)
    core = AnalogCore(W, InferenceConfig.ideal())
    np.testing.assert_allclose(core @ np.ones(3), W @ np.ones(3), rtol=1e-6)
    assert (core @ np.ones((3, 5))).shape == (2, 5) and core.shape == (2, 3)

def test_analog_and_digital_bias():
    rng = np.random.default_rng(2)
    W, b = rng.normal(size=(10, 30)), rng.normal(size=10)
    x = rng.uniform(-1, 1, size=(30, 4))
    for digital in (True, False):
        core = AnalogCore(W, InferenceConfig.ideal(digital_bias=digital, nrows_max=8), bias=b)
        assert relative_error(core @ x, W @ x + b[:, None]) < 2e-6
        assert core.hw_summary()["matrix_rows"] == 30 + (not digital)
    # bias_bits quantises the digital bias to its own sign-magnitude grid
    core = AnalogCore(W, InferenceConfig.ideal(bias_bits=4), bias=b)
    step = np.abs(b).max() / 7
    np.testing.assert_allclose(core @ np.zeros(30), np.rint(b / step) * step, rtol=1e-5)

def integer_reference(W, x, weight_bits, dac_bits):
    "Quantised digital result: integer codes multiplied exactly, scaled back (independent of the core)."
    kw, kx = 2 ** (weight_bits - 1) - 1, 2 ** (dac_bits - 1) - 1
    w_max, x_max = np.abs(W).max(), 1.0
    weight_codes = np.rint(W / w_max * kw).astype(np.int64)
    input_codes = np.rint(np.clip(x / x_max, -1, 1) * kx).astype(np.int64)
    return weight_codes @ input_codes, w_max * x_max / (kw * kx)

@pytest.mark.parametrize("nslices", [1, 7])
def test_granular_is_exact_on_worst_case_data(nslices):
    "GRANULAR + 1-bit input slices + adc_per_ibit + adc_bits = Bw + ceil(log2 N): equal to the integer result."
    rng = np.random.default_rng(3)
    n_rows, weight_bits, dac_bits = 300, 8, 8
    W = rng.normal(size=(6, n_rows))
    W[0], W[1], W[2] = np.abs(W).max(), -np.abs(W).max(), np.where(rng.random(n_rows) < .5, 1, -1) * np.abs(W).max()
    x = np.stack([np.ones(n_rows), -np.ones(n_rows), rng.uniform(-1, 1, n_rows)], axis=1)   # worst cases + random
    codes, scale = integer_reference(W, x, weight_bits, dac_bits)
    config = InferenceConfig(weight_bits=weight_bits, dac_bits=dac_bits, nslices=nslices, nrows_max=0, input_bitslicing=True,
                             adc_per_ibit=True, adc_range_option="GRANULAR", adc_bits=weight_bits + math.ceil(math.log2(n_rows)))
    got = AnalogCore(W, config) @ x
    np.testing.assert_array_equal(np.rint(got / scale), codes)           # integer codes, exactly
    np.testing.assert_allclose(got, codes * scale, rtol=1e-6, atol=1e-6 * np.abs(codes * scale).max())
    if nslices == 1:   # one bit less: the all-max columns clip
        short = AnalogCore(W, config.replace(adc_bits=config.adc_bits - 1)) @ x
        assert np.abs(short[:2, :2] - codes[:2, :2] * scale).min() > 0.1 * np.abs(codes[:2, :2] * scale).min()

def test_max_range_error_falls_with_bits():
    rng = np.random.default_rng(4)
    W, x = rng.normal(size=(64, 256)), rng.uniform(-1, 1, size=(256, 128))
    exact = W @ x
    errors = [relative_error(AnalogCore(W, InferenceConfig(weight_bits=0, dac_bits=0, adc_bits=bits, adc_range_option="MAX",
                                                           nrows_max=128)) @ x, exact) for bits in range(4, 15)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.02 < errors[0]

@pytest.mark.parametrize("nslices", [2, 3, 7])
def test_weight_slicing_with_ideal_adcs_equals_unsliced(nslices):
    rng = np.random.default_rng(5)
    W, x = rng.normal(size=(30, 100)), rng.uniform(-1, 1, size=(100, 50))
    unsliced = AnalogCore(W, InferenceConfig(weight_bits=8, nrows_max=40)) @ x
    sliced = AnalogCore(W, InferenceConfig(weight_bits=8, nslices=nslices, nrows_max=40)) @ x
    assert relative_error(sliced, unsliced) < 1e-5

@pytest.mark.parametrize("slice_size", [1, 2, 3, 7])
@pytest.mark.parametrize("per_bit", [False, True])
@pytest.mark.parametrize("signed", [True, False])
def test_input_slicing_with_ideal_adcs_equals_unsliced(slice_size, per_bit, signed):
    rng = np.random.default_rng(6)
    W, x = rng.normal(size=(30, 100)), rng.uniform(-1 if signed else 0, 1, size=(100, 50))
    input_range = (-1, 1) if signed else (0, 1)
    unsliced = AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8), input_range=input_range) @ x
    sliced = AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8, input_bitslicing=True, input_slice_size=slice_size,
                                           adc_per_ibit=per_bit), input_range=input_range) @ x
    assert relative_error(sliced, unsliced) < 1e-5

def test_sliced_adc_limits_per_slice_and_input_bit():
    "CALIBRATED limits of every accepted shape reproduce MAX when they equal the MAX range."
    rng = np.random.default_rng(7)
    W, x = rng.normal(size=(20, 60)), rng.uniform(-1, 1, size=(60, 30))
    base = InferenceConfig(weight_bits=8, nslices=2, adc_bits=6, input_bitslicing=True, input_slice_size=2, adc_per_ibit=True)
    reference = AnalogCore(W, base.replace(adc_range_option="MAX")) @ x
    for limits in (np.array([-60, 60]), np.tile([-60, 60], (2, 1)), np.tile([-60, 60], (2, 4, 1))):
        np.testing.assert_allclose(AnalogCore(W, base, adc_limits=limits) @ x, reference, rtol=1e-5, atol=1e-5)
    narrow = AnalogCore(W, base, adc_limits=np.tile([-3, 3], (2, 4, 1))) @ x
    assert relative_error(narrow, W @ x) < relative_error(reference, W @ x)     # calibrated ranges beat MAX

def analytic_read_noise_variance(core, x):
    "Σ_i σ_ij² v_i² from the per-device std (independent reference: computed from the programmed conductances)."
    c = core.config
    v = np.clip(x / core.x_max, -1, 1)
    G = core.programmed                                           # (slices, parts, rows, n_out)
    scale = c.alpha_noise / (math.sqrt(12) if c.noise_distribution == "uniform" else 1)
    sigma2 = (scale * (G if c.proportional_noise else np.ones_like(G))) ** 2
    per_device = sigma2.sum(axis=1)[0] if c.style == "BALANCED" else sigma2[0, 0]
    return (v ** 2) @ per_device * (core._scale ** 2)

@pytest.mark.parametrize("method", ["output_domain", "exact"])
@pytest.mark.parametrize("proportional", [True, False])
@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_read_noise_variance_matches_analytic(method, proportional, distribution):
    rng = np.random.default_rng(8)
    W, x = rng.normal(size=(12, 40)), rng.uniform(-1, 1, size=40)
    config = InferenceConfig(weight_bits=0, dac_bits=0, noise_model="generic", alpha_noise=0.05, proportional_noise=proportional,
                             noise_distribution=distribution, read_noise_method=method)
    core = AnalogCore(W, config)
    reads = 3000
    samples = core.apply(np.tile(x, (reads, 1)))                 # every row is a fresh read
    expected = analytic_read_noise_variance(core, x)
    ratio = samples.var(axis=0, ddof=1) / expected
    # the sample variance of n normal draws has relative std sqrt(2/(n-1)) = 2.6 %; uniform noise is lighter-tailed.
    # Average of 12 columns: std 0.75 %; allow 4 of those, and every column within 5 sigma.
    assert abs(ratio.mean() - 1) < 0.03 and np.all(np.abs(ratio - 1) < 0.13), ratio
    np.testing.assert_allclose(samples.mean(axis=0), W @ x, atol=5 * np.sqrt(expected.max() / reads))

def test_read_noise_methods_agree_in_distribution():
    rng = np.random.default_rng(9)
    W, x = rng.normal(size=(4, 64)), rng.uniform(-1, 1, size=64)
    config = InferenceConfig(weight_bits=0, dac_bits=0, noise_model="generic", alpha_noise=0.1)
    fast = AnalogCore(W, config).apply(np.tile(x, (2000, 1)))
    exact = AnalogCore(W, config.replace(read_noise_method="exact")).apply(np.tile(x, (2000, 1)))
    for column in range(4):
        assert stats.ks_2samp(fast[:, column], exact[:, column]).pvalue > 1e-3

def test_read_noise_is_fresh_on_every_read_and_reproducible():
    W = np.random.default_rng(10).normal(size=(5, 20))
    config = InferenceConfig(weight_bits=0, dac_bits=0, noise_model="generic", alpha_noise=0.05, seed=3)
    a, b = AnalogCore(W, config), AnalogCore(W, config)
    first = a @ np.ones(20)
    assert not np.array_equal(first, a @ np.ones(20))                  # a new draw on every read
    np.testing.assert_array_equal(first, b @ np.ones(20))               # same seed: bit-identical

@pytest.mark.parametrize("proportional", [True, False])
def test_programming_error_variance_over_reprogrammings(proportional):
    rng = np.random.default_rng(11)
    W, x = rng.normal(size=(8, 30)), rng.uniform(-1, 1, size=30)
    # Gmin = 0.2 keeps every device > 6 sigma from the clip at 0, so the analytic (unclipped) variance applies
    config = InferenceConfig(weight_bits=8, dac_bits=0, error_model="generic", alpha_error=0.03, proportional_error=proportional,
                             infinite_on_off_ratio=False, rmin=1e3, rmax=5e3)
    core = AnalogCore(W, config)
    outputs = np.array([core.program(run) @ x for run in range(2000)])
    target = core.target                                              # conductances before error
    sigma2 = (0.03 * (target if proportional else np.ones_like(target))) ** 2
    expected = (x ** 2) @ sigma2.sum(axis=1)[0] * core._scale ** 2
    ratio = outputs.var(axis=0, ddof=1) / expected
    assert abs(ratio.mean() - 1) < 0.05 and np.all(np.abs(ratio - 1) < 0.16), ratio
    ideal = AnalogCore(W, config.replace(error_model="none", alpha_error=0)) @ x
    np.testing.assert_allclose(outputs.mean(axis=0), ideal, atol=5 * np.sqrt(expected.max() / 2000))

def test_programming_is_seeded_per_run():
    W = np.random.default_rng(12).normal(size=(5, 20))
    config = InferenceConfig(error_model="generic", alpha_error=0.05)
    a = AnalogCore(W, config)
    run0 = a.programmed_weights().copy()
    assert not np.array_equal(run0, a.program(1).programmed_weights())
    np.testing.assert_array_equal(run0, a.program(0).programmed_weights())
    assert not np.array_equal(run0, AnalogCore(W, config.replace(seed=1)).programmed_weights())
    assert not np.array_equal(run0, AnalogCore(W, config, name="other layer").programmed_weights())

def test_programmed_weights_hold_the_quantised_matrix():
    W = np.random.default_rng(13).normal(size=(6, 10))
    for style in STYLES[:2] + STYLES[3:4]:
        core = AnalogCore(W, InferenceConfig(weight_bits=6, **style))
        step = np.abs(W).max() / 31
        grid = 2 * step if style.get("balanced_style") == "TWO_SIDED" else step
        held = core.programmed_weights()
        assert np.abs(held - W).max() <= grid / 2 + 1e-9
        if style.get("balanced_style") != "TWO_SIDED": np.testing.assert_allclose(held / step, np.rint(W / step), atol=1e-9)

def test_two_sided_cannot_hold_small_weights():
    "TWO_SIDED: G+ - G- takes odd multiples of Grange/Kw, so |w| < step/2... rounds to ±1 step, and 0 is a tie."
    W = np.array([[0.0, 0.001, -0.001, 1.0]])
    held = AnalogCore(W, InferenceConfig(weight_bits=4, balanced_style="TWO_SIDED")).programmed_weights()[0]
    np.testing.assert_allclose(held, [0, 1 / 7, -1 / 7, 1], atol=1e-12)

def test_offset_unit_column_and_digital_offset():
    rng = np.random.default_rng(14)
    W, x = rng.normal(size=(16, 90)), rng.uniform(-1, 1, size=(90, 20))
    config = InferenceConfig(style="OFFSET", weight_bits=8, dac_bits=8, nrows_max=30, ncols_max=5)
    digital, unit = (AnalogCore(W, config.replace(digital_offset=flag)) @ x for flag in (True, False))
    np.testing.assert_allclose(digital, unit, rtol=1e-4, atol=1e-4)
    assert AnalogCore(W, config.replace(digital_offset=False)).hw_summary()["array_cols"] == 6
    no_adc = relative_error(digital, W @ x)
    errors = {}
    for bits in (7, 14):
        with_adc = config.replace(adc_bits=bits, adc_range_option="MAX")
        errors[bits] = [relative_error(AnalogCore(W, with_adc.replace(digital_offset=flag)) @ x, W @ x) for flag in (True, False)]
    assert errors[7][1] > errors[7][0] > 2 * no_adc                # the unit column is digitised too: two roundings
    assert max(errors[14]) < no_adc + 0.01

def test_icol_max_clips_positive_and_negative_currents_separately():
    W = np.array([[1.0, 1.0, 1.0, -1.0], [0.5, 0.5, -1.0, -1.0]])
    x = np.ones(4)
    core = AnalogCore(W, InferenceConfig(weight_bits=0, dac_bits=0, icol_max=1.5))
    # row 0: I+ = 3 -> 1.5, I- = 1 -> out 0.5 ; row 1: I+ = 1, I- = 2 -> 1.5, out -0.5
    np.testing.assert_allclose(core @ x, [0.5, -0.5], rtol=1e-6)
    assert core.mode == "pair"

def test_separate_positive_and_negative_adcs():
    rng = np.random.default_rng(15)
    W, x = rng.normal(size=(10, 50)), rng.uniform(0, 1, size=(50, 10))
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", subtract_current_in_xbar=False)
    core = AnalogCore(W, config, input_range=(0, 1))
    np.testing.assert_allclose(core.tile_limits(0)[0, 0], [0, 50])          # non-negative currents: [0, N]
    assert relative_error(core @ x, W @ x) < 0.1

def test_adc_inputs_are_normalised_currents():
    rng = np.random.default_rng(16)
    W, x = rng.normal(size=(7, 100)), rng.uniform(-3, 3, size=(100, 11))
    core = AnalogCore(W, InferenceConfig(weight_bits=0, dac_bits=0, adc_bits=8, adc_range_option="MAX", nrows_max=40),
                      input_range=(-3, 3))
    records = core.adc_inputs(x.T)
    assert [r["row_tile"] for r in records] == [0, 1, 2] and all(r["part"] == "difference" for r in records)
    w_normalised = W / np.abs(W).max()
    for record, (start, stop) in zip(records, core.row_ranges):
        expected = (x[start:stop].T / 3) @ w_normalised[:, start:stop].T      # Σ G v, Gmax = 1
        np.testing.assert_allclose(record["values"][0, 0], expected, rtol=1e-5, atol=1e-5)

def test_hw_summary_counts_arrays_and_devices():
    core = AnalogCore(np.ones((300, 201)), InferenceConfig(nrows_max=64, ncols_max=128, nslices=2))
    s = core.hw_summary()
    assert (s["row_tiles"], s["col_tiles"], s["weight_slices"], s["arrays_per_tile"]) == (4, 3, 2, 2)
    assert s["n_arrays"] == 48 and s["devices"] == 201 * 300 * 2 * 2
    assert math.isclose(s["utilisation"], s["devices"] / (48 * 64 * 128))
    assert (s["cell_levels"], s["bits_per_cell"]) == (16, 4.0)
    assert AnalogCore(np.ones((3, 4)), InferenceConfig(style="OFFSET", weight_bits=4)).hw_summary()["cell_levels"] == 15

def test_unsigned_one_bit_dac():
    W = np.random.default_rng(17).normal(size=(3, 8))
    x = (np.arange(8) % 2).astype(float)
    np.testing.assert_allclose(AnalogCore(W, InferenceConfig(weight_bits=0, dac_bits=1), input_range=(0, 1)) @ x, W @ x, rtol=1e-5)

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(config=InferenceConfig(adc_bits=8)), ValueError, "needs adc_limits"),
    (dict(config=InferenceConfig(adc_bits=8, adc_range_option="MAX"), adc_limits=(-1, 1)), ValueError, "limits are only used with 'CALIBRATED'"),
    (dict(config=InferenceConfig(adc_bits=8), adc_limits=np.ones((3, 2))), ValueError, "adc_limits has shape (3, 2)"),
    (dict(config=InferenceConfig(adc_bits=8), adc_limits=(1, -1)), ValueError, "I_min < I_max"),
    (dict(config=InferenceConfig(), input_range=(-1, 2)), ValueError, "allowed: symmetric (-x, x) or non-negative (0, x)"),
    (dict(config=InferenceConfig(), input_range=(0, 0)), ValueError, "needs a finite hi > 0"),
    (dict(config=InferenceConfig(dac_bits=1)), ValueError, "dac_bits=1 is not allowed for signed inputs"),
    (dict(config=InferenceConfig(bias_bits="adc"), bias=np.ones(3)), ValueError, "bias_bits='adc' needs adc_bits > 0"),
    (dict(config=InferenceConfig(), bias=np.ones(4)), ValueError, "bias must be finite with shape (3,)"),
    (dict(config=dict(adc_bits=8)), TypeError, "config must be an InferenceConfig"),
])
def test_core_validation_errors(kwargs, error, message):
    with pytest.raises(error) as info: AnalogCore(np.ones((3, 5)), **kwargs)
    assert message in str(info.value)

def test_bad_matrix_and_inputs():
    with pytest.raises(ValueError, match="matrix contains NaN"): AnalogCore(np.array([[np.nan, 1.0]]), InferenceConfig())
    with pytest.raises(ValueError, match="must be 2-D"): AnalogCore(np.ones(3), InferenceConfig())
    core = AnalogCore(np.ones((3, 5)), InferenceConfig())
    with pytest.raises(ValueError, match="inputs contain NaN or inf"): core @ np.array([1, 2, np.inf, 0, 0])
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, 5\)"): core.apply(np.ones((2, 4)))

@pytest.mark.skipif(gpu_available(), reason="a GPU is usable here")
def test_use_gpu_without_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU is usable"): AnalogCore(np.ones((2, 2)), InferenceConfig(use_gpu=True))

@pytest.mark.skipif(not gpu_available(), reason="no usable CUDA GPU")
def test_gpu_matches_cpu():
    rng = np.random.default_rng(18)
    W, x = rng.normal(size=(64, 300)), rng.uniform(-1, 1, size=(300, 64))
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=128, nslices=2)
    cpu, gpu = AnalogCore(W, config) @ x, AnalogCore(W, config.replace(use_gpu=True)) @ x
    assert np.mean(cpu != gpu) < 1e-3 and relative_error(gpu, cpu) < 0.02

def layer_core(seed, shape, x_max, defaults, settings, name):
    "A core of a random layer (weights, bias, inputs a bit beyond the range) with `settings` over `defaults`."
    rng = np.random.default_rng(seed)
    W = rng.normal(size=shape).astype(np.float32)
    b = rng.normal(size=shape[0]).astype(np.float32)
    x = rng.uniform(-1.2 * x_max, 1.2 * x_max, size=(48, shape[1])).astype(np.float32)
    config = InferenceConfig(**{**defaults, **settings})
    return AnalogCore(W, config, bias=b, input_range=(-x_max, x_max), name=name), x, b

LINEAR_CASES = STYLES + [dict(nslices=3, weight_bits=7), dict(input_bitslicing=True, input_slice_size=2),
                         dict(digital_bias=False), dict(style="OFFSET", digital_offset=False, digital_bias=False),
                         dict(dac_bits=0), dict(dac_bits=0, digital_bias=False, style="OFFSET")]

@pytest.mark.parametrize("settings", LINEAR_CASES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_linear_shortcut_equals_tile_by_tile_read(settings):
    "Without ADC/noise/current limit the core reads one folded matrix; it must equal reading every tile, slice and part."
    core, x, b = layer_core(7, (23, 90), 2.5, dict(weight_bits=6, dac_bits=7, adc_bits=0, nrows_max=32, ncols_max=10,
                                                   error_model="generic", alpha_error=0.03), settings, "linear")
    config = core.config
    assert core.linear and core._linear is not None
    tile_by_tile = core._forward_drives(core.dac(x), collect=lambda *record: None)   # the profiling hook forces the full read
    np.testing.assert_allclose(core.apply(x), tile_by_tile, rtol=2e-5, atol=2e-5 * np.abs(tile_by_tile).max())
    # and against an independent reference: the programmed weights times the DAC-quantised inputs
    drives = np.rint(np.clip(x / 2.5, -1, 1) * 63) / 63 if config.dac_bits else x / 2.5     # an ideal DAC does not clip
    expected = drives * 2.5 @ core.programmed_weights().T + b
    # (an analog bias row is itself programmed, and a unit column's errors are not in programmed_weights: no exact reference)
    if config.digital_bias and (config.style == "BALANCED" or config.digital_offset):
        np.testing.assert_allclose(core.apply(x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

def test_linear_only_without_adc_noise_or_current_limit():
    W = np.eye(4)
    assert AnalogCore(W, InferenceConfig.ideal()).linear
    for settings in (dict(adc_bits=8, adc_range_option="MAX"), dict(noise_model="generic", alpha_noise=0.01), dict(icol_max=2.0)):
        assert not AnalogCore(W, InferenceConfig.ideal(**settings)).linear

CURRENT_CASES = [dict(), dict(style="OFFSET"), dict(style="OFFSET", digital_offset=False), dict(digital_bias=False),
                 dict(style="OFFSET", digital_bias=False), dict(subtract_current_in_xbar=False), dict(nslices=2),
                 dict(icol_max=3.0), dict(adc_bits=0), dict(adc_bits=0, dac_bits=0)]

@pytest.mark.parametrize("settings", CURRENT_CASES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "default")
def test_currents_from_conv_matrix_equal_apply(settings):
    "A library convolution hands `apply_currents` the product drives @ conv_matrix(); the outputs must equal `apply`."
    core, x, _ = layer_core(3, (12, 50), 2.0, dict(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="MAX", nrows_max=0,
                                                   error_model="generic", alpha_error=0.02), settings, "conv")
    matrix = core.conv_matrix()
    assert matrix is not None
    currents = core.input_drives(x) @ matrix
    np.testing.assert_allclose(core.apply_currents(currents), core.apply(x), rtol=1e-5, atol=1e-5 * np.abs(core.apply(x)).max())

def test_conv_matrix_none_when_one_product_is_not_enough():
    W = np.ones((3, 40))
    for settings in (dict(nrows_max=16), dict(noise_model="generic", alpha_noise=0.01, read_noise_method="exact"),
                     dict(input_bitslicing=True)):
        assert AnalogCore(W, InferenceConfig(adc_bits=8, adc_range_option="MAX", **settings)).conv_matrix() is None
    noisy = AnalogCore(W, InferenceConfig(adc_bits=8, adc_range_option="MAX", noise_model="generic", alpha_noise=0.01))
    assert noisy.conv_matrix() is not None and noisy.conv_spread().shape == (40, 1)   # a second product (σ² alike in every column)
    proportional = AnalogCore(W + np.arange(3)[:, None], noisy.config.replace(proportional_noise=True))
    assert proportional.conv_spread().shape == proportional.conv_matrix().shape


@pytest.mark.parametrize("settings", [dict(), dict(style="OFFSET"), dict(digital_bias=False), dict(subtract_current_in_xbar=False),
                                      dict(nslices=2), dict(proportional_noise=True)],
                         ids=["balanced", "offset", "analog-bias", "pair", "two-slices", "proportional"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_noisy_currents_from_conv_products_equal_apply_drives(settings, precision):
    "Read noise through two products (currents and variance, as two library convolutions) equals the core's own noisy read."
    from crosssim_nb.keyed_noise import bfloat16_operand, variance_matmul
    core, x, _ = layer_core(3, (12, 50), 2.0, dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=0,
                                                   noise_model="generic", alpha_noise=0.05, noise_variance_precision=precision),
                            settings, "conv")
    drives = core.input_drives(x)
    currents = drives @ core.conv_matrix()
    if precision == "float32": variance = (drives * drives) @ core.conv_spread()
    else: variance = variance_matmul(drives, bfloat16_operand(core.conv_spread()))     # the same rounded operands
    got = core.apply_currents(currents, variance=variance, first_row=7, read=3)
    expected = core.apply_drives(drives, first_row=7, read=3)
    close = np.isclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert close.mean() > 0.99                                                   # float rounding may move an ADC tie
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()          # ... by one level, never more
    assert not np.array_equal(expected, core.apply_drives(drives, first_row=7, read=4))   # another read: other noise


@pytest.mark.parametrize("method", ["output_domain", "exact"])
def test_read_noise_does_not_depend_on_how_rows_are_split(method):
    "Noise is keyed by each row's global index: reading rows in pieces gives bit-identical outputs (3 row tiles, ADC)."
    rng = np.random.default_rng(12)
    W, x = rng.normal(size=(10, 90)), rng.uniform(-1, 1, size=(300, 90)).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="MAX", nrows_max=30,
                             noise_model="generic", alpha_noise=0.05, read_noise_method=method)
    core = AnalogCore(W, config)
    assert len(core.row_ranges) == 3
    drives = core.input_drives(x)
    whole = core.apply_drives(drives, first_row=0)
    for size in (37, 1):
        pieces = np.concatenate([core.apply_drives(drives[s:s + size], first_row=s) for s in range(0, 300, size)])
        np.testing.assert_array_equal(pieces, whole)
    core.program(1)
    assert not np.array_equal(core.apply_drives(drives, first_row=0), whole)   # another Monte-Carlo run: other noise


def test_keyed_draws_are_standard_normal():
    "2^20 keyed draws (fixed key): mean 0, variance 1, no skew or excess kurtosis, and a Kolmogorov-Smirnov test against N(0, 1)."
    from crosssim_nb.keyed_noise import keyed_draws
    key = np.random.SeedSequence(2024).generate_state(2, np.uint64)
    z = keyed_draws(key, 0, 0, 1 << 14, 64).astype(np.float64).ravel()
    assert z.size == 1 << 20
    assert abs(z.mean()) < 5e-3 and abs(z.var() - 1) < 5e-3
    assert abs(stats.skew(z)) < 0.01 and abs(stats.kurtosis(z)) < 0.02
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert np.abs(z).max() < 6.67                                        # Box-Muller on 32-bit uniforms: bounded at 6.66 σ
    odd = keyed_draws(key, 3, 0, 1 << 12, 33).ravel()                     # an odd count per row, another read
    assert stats.kstest(odd, "norm").pvalue > 1e-3
    u = keyed_draws(key, 0, 0, 1 << 12, 64, "uniform").astype(np.float64).ravel()
    assert stats.kstest(u, stats.uniform(-math.sqrt(3), 2 * math.sqrt(3)).cdf).pvalue > 1e-3


def test_keyed_draws_and_noise_do_not_depend_on_the_split():
    "5000 rows at once equal pieces of 999 rows, for the draws themselves and for a noisy read (blocks inside add_noise)."
    from crosssim_nb.keyed_noise import keyed_draws
    key = np.random.SeedSequence(7).generate_state(2, np.uint64)
    whole = keyed_draws(key, 2, 11, 5000, 40)
    pieces = np.concatenate([keyed_draws(key, 2, 11 + s, min(999, 5000 - s), 40) for s in range(0, 5000, 999)])
    np.testing.assert_array_equal(pieces, whole)
    rng = np.random.default_rng(3)
    W, x = rng.normal(size=(1200, 64)), rng.uniform(-1, 1, size=(5000, 64)).astype(np.float32)
    core = AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0, noise_model="generic", alpha_noise=0.05))
    drives = core.input_drives(x)
    once = core.apply_drives(drives, first_row=0, read=1)
    pieces = np.concatenate([core.apply_drives(drives[s:s + 999], first_row=s, read=1) for s in range(0, 5000, 999)])
    np.testing.assert_array_equal(pieces, once)


@pytest.mark.parametrize("native", [True, False], ids=["tensorflow-bfloat16", "float32-emulation"])
def test_bfloat16_variance_scales_the_same_draws_within_its_bound(monkeypatch, native):
    "noise_variance_precision='bfloat16' keeps every keyed draw and changes each σ by at most 3u/2 = 0.6 % (u = 2⁻⁸, bfloat16's"
    " unit roundoff: x² and σ² rounded, and the product's result), on TensorFlow's bfloat16 product and on the float32 emulation."
    from crosssim_nb import keyed_noise
    monkeypatch.setattr(keyed_noise, "native_bfloat16", lambda: native)
    rng = np.random.default_rng(21)
    W = (rng.normal(size=(40, 300)) * 10.0 ** rng.uniform(-2, 0, (40, 300))).astype(np.float32)   # conductances over decades
    x = (rng.uniform(0, 1, (200, 300)) * 10.0 ** rng.uniform(-2, 0, (200, 1))).astype(np.float32)
    base = dict(weight_bits=0, dac_bits=0, adc_bits=0, nrows_max=0, noise_model="generic", alpha_noise=0.05, noise_dependence="proportional")
    def outputs(**settings):
        core = AnalogCore(W, InferenceConfig(**{**base, **settings}), input_range=(0, 1))
        assert core.mode == "difference" and len(core.row_ranges) == 1     # one current per output: noise = scale · σ · z
        return core.apply(x)
    clean = outputs(noise_model="none", alpha_noise=0.0)
    noise = {precision: outputs(noise_variance_precision=precision) - clean for precision in ("float32", "bfloat16")}
    assert noise["float32"].std() > 1e-3 * np.abs(clean).max()                         # the noise is there
    change = np.abs(noise["bfloat16"] - noise["float32"])
    assert np.all(change <= 1.5 * 2.0 ** -8 * np.abs(noise["float32"]) + 1e-6 * np.abs(clean).max())   # the same draws, σ within 0.6 %
    assert change.max() > 0                                                             # (and bfloat16 really ran)


@pytest.mark.parametrize("adc_bits", [4, 8])
def test_noise_and_adc_in_one_pass_equal_two_passes(monkeypatch, adc_bits):
    "The compiled pass that adds the read noise and digitises (one-tile cores, `_fused_levels`) gives the outputs and the ADC"
    " health counts of adding the noise and then running `ADCGrid.digitize`, bit for bit."
    from crosssim_nb.adc_health import core_counts
    core, x, _ = layer_core(5, (30, 60), 2.0, dict(weight_bits=8, dac_bits=8, adc_bits=adc_bits, adc_range_option="MAX", nrows_max=0,
                                                   noise_model="generic", alpha_noise=0.05), {}, "fused")
    x = np.concatenate([x] * 40)                                       # 1920 rows: the health counts sample every 8th
    drives = core.input_drives(x)
    currents, variance = drives @ core.conv_matrix(), (drives * drives) @ core.conv_spread()
    counts = core_counts(core)
    assert core._fused_levels() is not None and counts is not None
    outputs = {}
    for fused in (True, False):
        if not fused: monkeypatch.setattr(AnalogCore, "_fused_levels", lambda self: None)
        counts.reset()
        outputs[fused] = (core.apply_currents(currents.copy(), variance=variance, first_row=3, read=1), counts.as_dict())
    np.testing.assert_array_equal(outputs[True][0], outputs[False][0])
    assert outputs[True][1] == outputs[False][1] and outputs[True][1]["zero"] > 0
