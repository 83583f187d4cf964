"""Circuit ADCs (ramp, SAR, pipeline, cyclic): ideal transfers, DNL/INL statistics against analytic values and independent
per-conversion references, ADC sharing between columns, and their use in cores, calibration and stochastic rounding."""
import numpy as np
import pytest
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.adc import digitize
from crosssim_nb.adc_circuits import (CircuitADCGrid, adc_characteristics, draw_transfers,
                                      pipeline_convert)
from crosssim_nb.config import CIRCUIT_ADC_FIELDS

TYPES = ["ramp", "sar", "pipeline", "cyclic"]

def used_by(kind, **settings):
    "The circuit settings that ADC type `kind` uses (a setting it ignores must keep its default)."
    return {k: v for k, v in settings.items() if k not in CIRCUIT_ADC_FIELDS or kind in CIRCUIT_ADC_FIELDS[k]}

def ideal_reference(x, vref, bits):
    "Independent closed form (sheet §5.3): 2^N mid-rise levels on ±Vref, a tie goes to the lower code."
    half = 2 ** (bits - 1)
    code = np.clip(np.ceil(np.asarray(x, np.float64) / vref * half) - 1 + half, 0, 2 * half - 1)
    return vref * (2 * code + 1 - 2 * half) / (2 * half)

def tile_grid(config, columns, limits=(-4.0, 4.0), seed=0):
    "A one-array, one-slice circuit ADC periphery of `columns` columns."
    grid = CircuitADCGrid(np.array(limits)[None, None, None, None, :], config, [columns],
                          {"difference": (np.zeros((1, columns), int), np.arange(columns)[None])})
    grid.program(np.random.default_rng(seed))
    return grid

@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_error_free_circuit_adc_is_its_ideal_transfer_not_the_quantiser(kind, bits):
    config = InferenceConfig(adc_bits=bits, adc_type=kind, **used_by(kind, gain_db=0, split_cdac=bits >= 2, group_size=3))
    rng = np.random.default_rng(bits)
    ties = np.linspace(-4, 4, 2 ** bits + 1)                            # every exact threshold (Vref = 4)
    x = np.concatenate([ties, rng.uniform(-5, 5, 3000), [0.0]]).astype(np.float32)
    currents = np.tile(x[:, None], (1, 7))[None, :, None, :]              # (k, batch, slices, columns)
    out = tile_grid(config, 7).digitize(currents.copy(), "difference")
    expected = ideal_reference(np.clip(x, -4, 4), 4.0, bits).astype(np.float32)
    np.testing.assert_array_equal(out[0, :, 0, :], np.tile(expected[:, None], (1, 7)))
    assert out[0, -1, 0, 0] == -4.0 / 2 ** bits                           # zero is a threshold: no zero level
    if bits >= 2:
        quantised = digitize(x.copy(), np.array([-4.0, 4.0]), bits)       # the generic quantiser keeps a zero level
        assert quantised[-1] == 0 and np.mean(quantised != expected) > 0.3

def test_asymmetric_range_clips_to_the_range_but_spans_vref():
    config = InferenceConfig(adc_bits=4, adc_type="sar", gain_db=0)
    x = np.linspace(-3, 6, 400).astype(np.float32)
    out = tile_grid(config, 1, limits=(-1.0, 4.0)).digitize(x[None, :, None, None].copy(), "difference")[0, :, 0, 0]
    np.testing.assert_array_equal(out, ideal_reference(np.clip(x, -1, 4), 4.0, 4).astype(np.float32))

def dnl_from_codes(codes, bits, sweep_step_lsb):
    "DNL of inner codes from a dense sweep (code counts × step)."
    widths = np.bincount(codes.ravel(), minlength=2 ** bits)[: 2 ** bits] * sweep_step_lsb
    return widths[1:-1] - 1

@pytest.mark.parametrize("kind", ["ramp", "sar"])
def test_comparator_offset_inl_matches_analytic(kind):
    "A comparator offset o (fraction of Vref) shifts every transition by -o: INL = -o·2^(N-1) LSB, std σ·2^(N-1)."
    bits, sigma, count = 6, 0.01, 1500
    config = InferenceConfig(adc_bits=bits, adc_type=kind, **used_by(kind, gain_db=0, sigma_comparator=sigma, group_size=1))
    transfers = draw_transfers(config, count, np.random.default_rng(0))
    inl = np.array([adc_characteristics(t, bits)["inl"] for t in transfers])
    dnl = np.array([adc_characteristics(t, bits)["dnl"] for t in transfers])
    expected = sigma * 2 ** (bits - 1)
    for code in (5, 31, 50):                                              # std of a sample std: 1/sqrt(2·1500) = 1.8 %
        assert abs(inl[:, code].std() / expected - 1) < 0.08
    np.testing.assert_allclose(dnl[:, 5:-5], 0, atol=1e-9)                # an offset moves codes (inside ±Vref), it does not widen them

def ramp_levels_reference(eps, bits):
    "Independent restatement of the symmetric ramp CDAC (infinite gain): L_c = sgn(s)·T_c/C_(N-1) + 1/2^N."
    caps = 2.0 ** np.arange(bits + 1) + eps * 2.0 ** (np.arange(bits + 1) / 2)
    levels = []
    for c in range(2 ** bits):
        s = c - 2 ** (bits - 1)
        total = sum(caps[k] for k in range(bits) if (abs(s) >> k) & 1)
        levels.append((1 if s >= 0 else -1) * total / caps[bits - 1] + 1 / 2 ** bits)
    return np.array(levels)

def test_capacitor_mismatch_dnl_statistics_match_a_per_conversion_reference():
    "Ramp and non-split SAR DNL spread over many ADC instances vs direct conversions of independently drawn instances."
    bits, sigma, count = 5, 0.03, 600
    sweep = np.linspace(-1, 1, 2 ** bits * 64, endpoint=False) + 1 / (2 ** bits * 64)
    step_lsb = (sweep[1] - sweep[0]) / (2 / 2 ** bits)
    reference_rng = np.random.default_rng(99)
    ramp_ref, sar_ref = [], []
    for _ in range(count):
        levels = ramp_levels_reference(reference_rng.normal(0, sigma, bits + 1), bits)
        nearest = np.argmin(np.abs(levels[None, :] - sweep[:, None]), axis=1)
        ramp_ref.append(dnl_from_codes(nearest, bits, step_lsb))
        thresholds = levels - 1 / 2 ** bits                               # non-split SAR: binary search on these
        code = np.zeros(sweep.shape, int)
        for i in range(1, bits + 1):
            code += 2 ** (bits - i) * (sweep > thresholds[code + 2 ** (bits - i)])
        sar_ref.append(dnl_from_codes(code, bits, step_lsb))
    for kind, reference in (("ramp", ramp_ref), ("sar", sar_ref)):
        config = InferenceConfig(adc_bits=bits, adc_type=kind, **used_by(kind, gain_db=0, sigma_capacitor=sigma, split_cdac=False, group_size=1))
        if kind == "ramp":   # one CDAC per array: draw many arrays of one column each
            transfers = [draw_transfers(config, 1, np.random.default_rng(seed))[0] for seed in range(count)]
        else: transfers = draw_transfers(config, count, np.random.default_rng(1))
        ours = np.array([adc_characteristics(t, bits)["dnl"] for t in transfers])
        theirs = np.array(reference)
        major = 2 ** (bits - 1) - 1                                       # around mid-scale the MSB capacitor switches
        for code in (major - 1, major, major + 1, 3, 20):
            ratio = ours[:, code].std() / theirs[:, code].std()
            assert 0.85 < ratio < 1.15, (kind, code, ratio)               # two samples of 600: ±3.5σ ≈ ±10 %
        assert abs(ours.mean() - theirs.mean()) < 0.01

def pipeline_reference(x, bits, offsets, c1, c2, cpar):
    "Independent per-conversion pipeline (infinite gain) written from the sheet."
    v, code = x.astype(np.float64), np.zeros(x.shape, int)
    for n in range(bits - 1):
        high, low = v > 0.25 + offsets[2 * n], v < -0.25 + offsets[2 * n + 1]
        middle = ~high & ~low
        gamma = c2[n] / c1[n]
        code += 2 ** (bits - 1 - n) * high + 2 ** (bits - 2 - n) * middle
        v = (1 + gamma) * v + (low.astype(float) - high) * gamma
    return code + (v > offsets[-1])

def test_pipeline_capacitor_mismatch_dnl_statistics_match_a_per_conversion_reference():
    bits, sigma, count = 6, 0.02, 300
    sweep = np.linspace(-1, 1, 2 ** bits * 32, endpoint=False) + 1 / (2 ** bits * 32)
    step_lsb = (sweep[1] - sweep[0]) / (2 / 2 ** bits)
    config = InferenceConfig(adc_bits=bits, adc_type="pipeline", gain_db=0, sigma_c1=sigma, sigma_c2=sigma, group_size=1)
    ours = np.array([adc_characteristics(t, bits)["dnl"] for t in draw_transfers(config, count, np.random.default_rng(3))])
    rng = np.random.default_rng(4)
    theirs = np.array([dnl_from_codes(pipeline_reference(sweep, bits, np.zeros(2 * bits - 1), 1 + rng.normal(0, sigma, bits - 1),
                                                         1 + rng.normal(0, sigma, bits - 1), np.zeros(bits - 1)), bits, step_lsb)
                       for _ in range(count)])
    assert 0.85 < ours.std() / theirs.std() < 1.15
    assert 0.8 < np.abs(ours[:, 31]).mean() / np.abs(theirs[:, 31]).mean() < 1.2   # the mid-scale (first-stage) transition

def test_pipeline_lookup_equals_direct_conversion_with_all_errors():
    rng = np.random.default_rng(5)
    from crosssim_nb.adc_circuits import pipeline_transfer
    for bits in (2, 5, 9):
        offsets, c1, c2, cpar = (rng.normal(0, 0.03, 2 * bits - 1), 1 + rng.normal(0, .03, bits - 1), 1 + rng.normal(0, .03, bits - 1),
                                 rng.normal(0, .03, bits - 1))
        x = rng.uniform(-1, 1, 20000)
        np.testing.assert_array_equal(pipeline_transfer(bits, offsets, c1, c2, cpar, 60)(x), pipeline_convert(x, bits, offsets, c1, c2, cpar, 60))

@pytest.mark.parametrize("kind", TYPES)
def test_group_size_columns_share_one_transfer(kind):
    config = InferenceConfig(adc_bits=6, adc_type=kind, **used_by(kind, sigma_comparator=0.05, sigma_capacitor=0.05, sigma_c1=0.05, group_size=4))
    grid = tile_grid(config, 10)
    x = np.random.default_rng(0).uniform(-4, 4, 3000).astype(np.float32)
    out = grid.digitize(np.tile(x[:, None], (1, 10))[None, :, None, :].copy(), "difference")[0, :, 0, :]
    same = [(a, b) for a in range(10) for b in range(a + 1, 10) if np.array_equal(out[:, a], out[:, b])]
    expected = ([] if kind == "ramp" else [(a, b) for a in range(10) for b in range(a + 1, 10) if a // 4 == b // 4])
    assert same == expected
    np.testing.assert_array_equal(grid.adc_index["difference"][0], np.arange(10) if kind == "ramp" else np.arange(10) // 4)

def test_core_columns_map_to_adcs_per_array_and_draws_are_per_run():
    W = np.random.default_rng(0).normal(size=(10, 30))
    config = InferenceConfig(weight_bits=8, adc_bits=6, adc_type="sar", adc_range_option="MAX", group_size=4, ncols_max=5,
                             sigma_comparator=0.05, style="OFFSET", digital_offset=False, nslices=2)
    core = AnalogCore(W, config, name="layer")
    grid = core._tile_grids[0]
    test = grid.adc_index
    # 2 slices x 2 column tiles = 4 arrays of 5 + 1 (unit column) columns -> 2 SARs each; the unit column is column 5 of its array
    assert len(grid.transfers) == 8
    np.testing.assert_array_equal(test["column"][0], [0, 0, 0, 0, 1, 2, 2, 2, 2, 3])
    np.testing.assert_array_equal(test["reference"][0], [1] * 5 + [3] * 5)
    np.testing.assert_array_equal(test["column"][1], np.array([0, 0, 0, 0, 1, 2, 2, 2, 2, 3]) + 4)
    x = np.random.default_rng(1).uniform(-1, 1, (20, 30))
    first = core.apply(x)
    np.testing.assert_array_equal(AnalogCore(W, config, name="layer").apply(x), first)        # same seed: same ADCs
    core.program(1)
    assert not np.array_equal(core.apply(x), first)                                           # a new run draws new ADCs

@pytest.mark.parametrize("kind", TYPES)
def test_ideal_circuit_adc_in_a_core_equals_an_independent_computation(kind):
    rng = np.random.default_rng(2)
    W, x = rng.normal(size=(12, 40)), rng.uniform(-1, 1, (50, 40))
    config = InferenceConfig(weight_bits=0, dac_bits=0, adc_bits=7, adc_type=kind, gain_db=0, adc_range_option="MAX", nrows_max=20)
    out = AnalogCore(W, config).apply(x)
    w_max = np.abs(W).max()
    expected = sum(ideal_reference((W[:, a:a + 20] / w_max) @ x[:, a:a + 20].T, 20.0, 7) for a in (0, 20)).T * w_max
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)

def test_one_bit_circuit_adc_is_a_sign_comparator():
    W = np.array([[1.0, -0.5], [-1.0, 0.25]])
    out = AnalogCore(W, InferenceConfig(weight_bits=0, dac_bits=0, adc_bits=1, adc_type="ramp", gain_db=0, adc_range_option="MAX")).apply(
        np.array([[1.0, 0.2], [-1.0, 0.0]]))
    np.testing.assert_allclose(out, np.array([[1, -1], [-1, 1]]) * 1.0 * 1.0)   # ±Vref/2 = ±1 (2 rows), times w_max = 1

def test_stochastic_rounding_is_unbiased_and_drawn_per_conversion():
    W = np.full((1, 4), 0.25)
    config = InferenceConfig(weight_bits=0, dac_bits=0, adc_bits=3, adc_range_option="MAX", stochastic_rounding=True)
    core = AnalogCore(W, config)
    x = np.full((20000, 4), 0.3)                     # output 0.3 on a grid of 1/3 (MAX range ±4, 3 bits: step 4/3, times w_max = 1/4)
    out = core.apply(x)[:, 0]
    exact = 0.3
    assert len(np.unique(out)) == 2 and abs(out.mean() - exact) < 0.01    # two neighbouring levels, unbiased
    plain = AnalogCore(W, config.replace(stochastic_rounding=False)).apply(x[:10])[:, 0]
    assert len(np.unique(plain)) == 1 and abs(plain[0] - 1 / 3) < 1e-6     # rounds to nearest: biased by 1/30

def test_calibration_works_unchanged_with_every_adc_type():
    keras = pytest.importorskip("keras")
    from crosssim_nb.network import AnalogNetwork
    from crosssim_nb.calibration import calibrate_adc
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"), keras.layers.ReLU(),
                              keras.layers.Flatten(), keras.layers.Dense(5, name="out")])
    images = np.random.default_rng(0).random((80, 8, 8, 1)).astype(np.float32)
    exact = model.predict(images[40:], verbose=0)
    errors = {}
    for kind in ["quantizer"] + TYPES:
        config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_type=kind, adc_range_option="MAX", **used_by(kind, sigma_comparator=0.002))
        net = AnalogNetwork.from_keras(model, config, calibration_data=images[:40], input_nonnegative=True)
        calibration = calibrate_adc(net, images[:40])
        calibrated = AnalogNetwork.from_keras(model, config.replace(adc_range_option="CALIBRATED"), input_nonnegative=True,
                                              input_ranges=calibration.input_ranges, adc_limits=calibration.adc_limits)
        errors[kind] = np.abs(calibrated.predict(images[40:]) - exact).mean() / np.abs(exact).mean()
        assert errors[kind] < 0.5 * np.abs(net.predict(images[40:]) - exact).mean() / np.abs(exact).mean(), kind
    assert all(e < 0.1 for e in errors.values()), errors

@pytest.mark.filterwarnings("ignore::UserWarning")
def test_stochastic_rounding_does_not_depend_on_the_batch_size():
    "Stochastic rounding's draws are keyed per image like the read noise: batches of 200, 37 and 1 give bit-identical outputs."
    keras = pytest.importorskip("keras")
    from crosssim_nb.network import AnalogNetwork
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="conv"), keras.layers.ReLU(),
                              keras.layers.Flatten(), keras.layers.Dense(4, name="head")])
    x = np.random.default_rng(2).random((200, 6, 6, 2)).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=3, adc_range_option="MAX", stochastic_rounding=True, nrows_max=8)
    net = AnalogNetwork.from_keras(model, config, calibration_data=x, input_nonnegative=True)
    reference = net.predict(x, batch_size=200)
    for batch_size in (37, 1):
        np.testing.assert_array_equal(net.predict(x, batch_size=batch_size), reference)
    rounded = AnalogNetwork.from_keras(model, config.replace(stochastic_rounding=False), calibration_data=x, input_nonnegative=True)
    assert not np.array_equal(rounded.predict(x), reference)       # the draws are really used
    net.program(1)
    assert not np.array_equal(net.predict(x[:50]), reference[:50])  # another run: other draws

@pytest.mark.parametrize("kind", ["quantizer", "ramp"])
def test_bias_bits_adc_is_the_adcs_own_step(kind):
    "bias_bits='adc' rounds the digital bias to the spacing of the ADC's output levels (a circuit ADC: 2·Vref/2^N)."
    W = np.array([[0.6, -0.2, 0.4, 0.1]])
    config = InferenceConfig(weight_bits=0, dac_bits=0, adc_bits=4, adc_type=kind, adc_range_option="MAX", bias_bits="adc")
    bias = np.array([0.337])
    core = AnalogCore(W, config, bias=bias)
    plain = AnalogCore(W, config.replace(bias_bits=0))
    x = np.random.default_rng(0).uniform(-1, 1, (4000, 4))
    levels = np.unique(np.round(plain.apply(x)[:, 0], 6))
    spacing = np.diff(levels).min()
    assert len(levels) >= 5
    quantized = float(core._quantized_bias()[0])
    assert abs(quantized / spacing - round(quantized / spacing)) < 1e-4      # a whole number of output steps
    assert abs(quantized - bias[0]) <= spacing / 2 + 1e-6


def test_identical_adcs_share_one_table_row():
    """16-bit error-free ADCs with group_size=1 on a 256x256 layer of 32-row tiles (was > 120 s and 4.7 GB): every ADC is
    the same circuit, so each tile's table holds one transfer; the tables' memory stays far below one 16-bit table per ADC."""
    import tracemalloc
    W = np.random.default_rng(30).normal(size=(256, 256))
    config = InferenceConfig(adc_bits=16, adc_type="sar", group_size=1, adc_range_option="MAX", nrows_max=32)
    tracemalloc.start()
    core = AnalogCore(W, config, name="wide")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(core._tile_grids) == 8
    for grid in core._tile_grids:
        assert grid.table.n_adcs == 1 and len(grid.transfers) == 256     # 256 ADCs, one table row
    assert peak < 100e6, peak                  # one table per ADC: 2048 x 2^16 codes x >= 16 bytes = 2.1 GB
    # a ramp with capacitor errors only: one CDAC per array, every comparator offset 0, so one row per array
    ramp = AnalogCore(W[:16, :32], InferenceConfig(adc_bits=6, adc_type="ramp", adc_range_option="MAX", sigma_capacitor=0.05,
                                                   subtract_current_in_xbar=False), name="r")
    grid = ramp._tile_grids[0]
    assert len(ramp._adc_arrays()[0]) == 2 and grid.table.n_adcs == 2 and len(grid.transfers) == 32
    assert {id(t) for t in grid.transfers[:16]} != {id(t) for t in grid.transfers[16:]}   # G+ and G- arrays: own CDACs


@pytest.mark.parametrize("kind, settings", [("sar", dict(sigma_capacitor=0.01, sigma_comparator=0.01, group_size=1)),
                                             ("pipeline", dict(sigma_c1=0.01, sigma_comparator=0.01, group_size=1))])
def test_table_memory_within_its_estimate(kind, settings):
    "The bytes estimated up front bound the measured peak of drawing and packing 64 distinct 12-bit ADCs."
    import tracemalloc
    from crosssim_nb.adc_circuits import circuit_adc_bytes
    config = InferenceConfig(adc_bits=12, adc_type=kind, adc_range_option="MAX", **settings)
    W = np.random.default_rng(32).normal(size=(64, 64))
    tracemalloc.start()
    core = AnalogCore(W, config, name="est")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert core._tile_grids[0].table.n_adcs == 64
    estimate = circuit_adc_bytes(config, core._adc_arrays()[0], 1)
    assert estimate == (64 + 4) * 4096 * 96 + (32 << 20)
    assert peak <= estimate, (peak, estimate)


def test_tables_past_the_budget_are_refused_up_front():
    "2048 distinct 16-bit ADCs (~13 GB of tables) are refused before any is drawn, naming the settings that set the size."
    W = np.random.default_rng(33).normal(size=(256, 256))
    config = InferenceConfig(adc_bits=16, adc_type="sar", group_size=1, adc_range_option="MAX", nrows_max=32,
                             sigma_capacitor=0.01, sigma_comparator=0.01)
    with pytest.raises(ValueError, match=r"AnalogCore 'big': the sar ADCs of this layer need about 12.9 GB of lookup tables "
                                         r"\(2048 ADCs .*adc_bits=16, group_size=1, 8 row tiles\).*fewer adc_bits, a larger group_size"):
        AnalogCore(W, config, name="big")
