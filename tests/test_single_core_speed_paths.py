"""The single core's speed paths (issue 27, item 4) against the reference path (`core._FAST_PATHS = False`) and against
integer arithmetic: the compiled DAC pass, unsliced reads as one exact integer product (onnxruntime's int8 GEMM), the
read-noise pass that digitises too, noise added in row blocks over the CPUs, and the ideal core's input check."""
import numpy as np
import pytest
import crosssim_nb.core as core_module
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.core import NonFiniteResultError
from crosssim_nb.dac import quantize_inputs, dac_levels
from crosssim_nb.adc import adc_grid

# 8-bit levels against 8-bit codes need int32 sums (VNNI/AMX kernels); an AVX2-only CPU takes the float32 product there
needs_int32_sums = pytest.mark.skipif(not core_module._int8_sums_exact(),
                                      reason="this CPU's int8 kernel sums pairs in int16: 8-bit levels × 8-bit codes take the float32 product")

@pytest.fixture(autouse=True)
def small_reads_take_the_integer_product(monkeypatch):
    "The test layers are small: let every read be an integer product where it can be (the size threshold has its own test)."
    monkeypatch.setattr(core_module, "_INTEGER_ABOVE", 0)

def read_reference(core, x, monkeypatch):
    "The same core read with every fast path off (the tile-by-tile float32 product and NumPy's ADC passes), same read number."
    saved = core._reads
    with monkeypatch.context() as patched:
        patched.setattr(core_module, "_FAST_PATHS", False)
        core._reads = saved - 1
        return core.apply(x)

def case(seed=0, n_out=23, n_in=150, batch=200, signed=True, spread=1.1):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_out, n_in)).astype(np.float32)
    x = rng.uniform(-spread if signed else 0, spread, size=(batch, n_in)).astype(np.float32)
    return W, x, ((-1, 1) if signed else (0, 1))

# unsliced settings whose read is an integer product: DAC codes times whole cell levels
INTEGER = {
    "balanced-8bit": dict(),
    "two-sided": dict(balanced_style="TWO_SIDED"),
    "infinite-ratio": dict(infinite_on_off_ratio=True),
    "pair-infinite-ratio": dict(subtract_current_in_xbar=False, infinite_on_off_ratio=True),
    "offset-digital": dict(style="OFFSET"),
    "offset-unit-column": dict(style="OFFSET", digital_offset=False),
    "tiles-partial-rows": dict(nrows_max=41),
    "analog-bias": dict(digital_bias=False),
    "calibrated": dict(adc_range_option="CALIBRATED"),
    "6-bit-weights-7-bit-dac": dict(weight_bits=6, dac_bits=7),
}

def build(name, signed, **extra):
    W, x, input_range = case(signed=signed)
    settings = {**dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX"), **INTEGER[name], **extra}
    limits = np.array([-2.5, 3.0]) if settings["adc_range_option"] == "CALIBRATED" else None
    bias = np.random.default_rng(1).normal(size=W.shape[0]) if not settings.get("digital_bias", True) else None
    return AnalogCore(W, InferenceConfig(**settings), adc_limits=limits, input_range=input_range, bias=bias), x

def exact_currents(core, drives, tile):
    "A tile's currents from the integer codes and levels in int64 (exact), scaled once to float32 as the integer read does."
    levels, zero, dac, unit = core._integer_operands(tile)
    codes = np.rint(drives[:, tile.start:tile.stop].astype(np.float64) * float(dac)).astype(np.int64)
    return np.multiply(codes @ levels.astype(np.int64), unit, dtype=np.float32)

def full_drives(core, x):
    drives = core.input_drives(x)
    if core.analog_bias: drives = np.concatenate([drives, np.full((len(x), 1), core.bias_drive, dtype=np.float32)], axis=1)
    return drives

@needs_int32_sums
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("name", sorted(INTEGER))
def test_integer_read_is_the_exact_product(name, signed):
    "The int8 read's currents equal the int64 product of the codes and levels (scaled once), and the float32 product to its rounding."
    core, x = build(name, signed)
    drives = full_drives(core, x)
    for tile in core._tiles:
        assert core._integer_operands(tile) is not None
        currents = core._integer_currents(drives[None], tile)[0]
        np.testing.assert_array_equal(currents, exact_currents(core, drives, tile))
        float_product = drives[:, tile.start:tile.stop] @ tile.matrix
        np.testing.assert_allclose(currents, float_product, rtol=0, atol=2e-6 * np.abs(float_product).max())

def tie_outputs(core, x):
    "Outputs `(batch, n_out)` whose ADC input (any part, any row tile) sits within 1e-4 of a level of a rounding tie."
    tied = np.zeros((len(x), core.n_out), dtype=bool)
    for record in core.adc_inputs(x):                  # (slices, k, batch, n_out) per row tile and part, ADCs off
        offset, step, _, _ = (float(np.ravel(v)[0]) for v in adc_grid(core.tile_limits(record["row_tile"])[0, 0], core.config.adc_bits))
        position = (record["values"][0, 0].astype(np.float64) - offset) / step
        tied |= np.abs(position - np.floor(position) - 0.5) < 1e-4
    return tied

@needs_int32_sums
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("name", sorted(INTEGER))
def test_integer_read_equals_the_reference_path(name, signed, monkeypatch):
    "Outputs equal the reference path's bit for bit, except where an exact current sits on an ADC tie (one level, DESIGN §9)."
    core, x = build(name, signed)
    fast = core.apply(x)
    reference = read_reference(core, x, monkeypatch)
    differ = fast != reference
    assert not (differ & ~tie_outputs(core, x)).any(), np.argwhere(differ & ~tie_outputs(core, x))[:5]
    assert differ.mean() < 1e-3

def test_integer_read_bit_for_bit_where_the_float_product_is_exact(monkeypatch):
    "1-bit unsigned drives and 2-bit weights at infinite on/off ratio: the float32 product is exact too, so every output is the reference's."
    rng = np.random.default_rng(4)
    W = rng.normal(size=(30, 200)).astype(np.float32)
    x = rng.uniform(0, 1, size=(300, 200)).astype(np.float32)
    config = InferenceConfig(weight_bits=2, dac_bits=1, adc_bits=6, adc_range_option="MAX", infinite_on_off_ratio=True)
    core = AnalogCore(W, config, input_range=(0, 1))
    assert core._integer_operands(core._tiles[0]) is not None
    np.testing.assert_array_equal(core.apply(x), read_reference(core, x, monkeypatch))

@needs_int32_sums
def test_integer_read_takes_its_conditions():
    "Random programming, weight or input slices, an unquantised side or 8-bit unsigned codes past uint8 with an offset keep the float32 product."
    W, x, _ = case()
    base = dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
    def operands(**settings):
        core = AnalogCore(W, InferenceConfig(**{**base, **settings}))
        return core._integer_operands(core._tiles[0])
    assert operands() is not None
    assert operands(error_model="generic", alpha_error=0.01) is None          # programmed at random: not whole levels
    assert operands(nslices=2) is None                                        # weight slices: the sliced reads' own path
    assert operands(input_bitslicing=True) is None
    assert operands(weight_bits=0) is None and operands(dac_bits=0, adc_bits=8) is None
    assert operands(dac_bits=9) is None                                       # 255 codes + the signed offset 128: past uint8
    unsigned = AnalogCore(W, InferenceConfig(**base), input_range=(0, 1))     # 255 unsigned codes, no offset: uint8
    assert unsigned._integer_operands(unsigned._tiles[0]) is not None

def test_integer_read_refuses_saturating_kernels(monkeypatch):
    "Without int32 sums (AVX2's u8×s8 pairs saturate in int16) 8-bit levels against 8-bit codes take the float32 product; 6-bit levels cannot saturate."
    W, _, _ = case()
    monkeypatch.setattr(core_module, "_int8_sums_exact", lambda: False)
    eight = AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX"))
    six = AnalogCore(W, InferenceConfig(weight_bits=6, dac_bits=8, adc_bits=8, adc_range_option="MAX"))   # 2·255·31 < 32767
    assert eight._integer_operands(eight._tiles[0]) is None and six._integer_operands(six._tiles[0]) is not None

def test_int8_probe_agrees_with_a_large_worst_case_product():
    "Where the probe says the int8 product sums in int32, a large worst-case product (all codes 255, levels ±127) is exact."
    if not core_module._int8_sums_exact(): pytest.skip("this CPU's int8 kernel sums pairs in int16: the float32 product runs")
    session = core_module._integer_session(1)
    codes = np.full((300, 1152), 255, dtype=np.uint8)
    levels = np.where(np.random.default_rng(0).random((1152, 64)) < 0.5, -127, 127).astype(np.int8)
    got = session.run(None, {"A": codes, "B": levels, "zero": np.array(0, dtype=np.uint8)})[0]
    np.testing.assert_array_equal(got, codes.astype(np.int64) @ levels.astype(np.int64))

@needs_int32_sums
def test_drives_off_the_dac_grid_take_the_float_product(monkeypatch):
    "`apply_drives` with drives that are no DAC outputs: the integer read declines, the outputs are the reference's bit for bit."
    core, x = build("balanced-8bit", True)
    drives = np.clip(x, -1, 1) * np.float32(0.999)            # not on the 1/127 grid
    assert core._integer_currents(drives[None], core._tiles[0]) is None
    fast = core.apply_drives(drives, first_row=0, read=0)
    monkeypatch.setattr(core_module, "_FAST_PATHS", False)
    np.testing.assert_array_equal(fast, core.apply_drives(drives, first_row=0, read=0))

@needs_int32_sums
def test_integer_read_switches_off(monkeypatch):
    "`_INTEGER_READS = False` or `_FAST_PATHS = False`: no integer read (the float32 product)."
    core, x = build("balanced-8bit", True)
    drives = core.input_drives(x)[None]
    assert core._integer_currents(drives, core._tiles[0]) is not None
    monkeypatch.setattr(core_module, "_INTEGER_READS", False)
    assert core._integer_currents(drives, core._tiles[0]) is None
    monkeypatch.setattr(core_module, "_INTEGER_READS", True)
    monkeypatch.setattr(core_module, "_FAST_PATHS", False)
    assert core._integer_currents(drives, core._tiles[0]) is None

@needs_int32_sums
def test_small_tiles_keep_the_float_product(monkeypatch):
    "Tiles below `_INTEGER_ABOVE` multiply-adds per vector keep the float32 product, whatever the batch (a split reads alike)."
    core, x = build("balanced-8bit", True)
    drives = core.input_drives(x)[None]
    per_vector = core.rows * core._tiles[0].columns
    monkeypatch.setattr(core_module, "_INTEGER_ABOVE", per_vector + 1)
    assert core._integer_currents(drives, core._tiles[0]) is None
    monkeypatch.setattr(core_module, "_INTEGER_ABOVE", per_vector)
    assert core._integer_currents(drives, core._tiles[0]) is not None and core._integer_currents(drives[:, :1], core._tiles[0]) is not None

@needs_int32_sums
def test_integer_levels_follow_the_programming():
    "Levels are made once per programming and made again for a new one (a new run, new ADC limits)."
    core, x = build("calibrated", True)
    first = core._integer_operands(core._tiles[0])
    assert core._integer_operands(core._tiles[0]) is first                   # kept, not rebuilt per read
    core.set_adc_limits(np.array([-2.0, 2.0]))
    assert core._integer_operands(core._tiles[0]) is not first
    np.testing.assert_array_equal(core._integer_operands(core._tiles[0])[0], first[0])   # the same devices

@needs_int32_sums
def test_profiles_keep_the_float_product():
    "ADC-input profiles (calibration) read with the float32 product, so percentile limits do not land on the exact current grid."
    core, x = build("balanced-8bit", True)
    records = core.adc_inputs(x)
    drives = core.input_drives(x)
    np.testing.assert_array_equal(records[0]["values"][0, 0], drives @ core._tiles[0].matrix)

NOISY = {
    "proportional": dict(noise_model="generic", alpha_noise=0.01),
    "independent": dict(noise_model="generic", alpha_noise=0.01, noise_dependence="independent"),
    "uniform": dict(noise_model="generic", alpha_noise=0.02, noise_distribution="uniform"),
    "float32-variance": dict(noise_model="generic", alpha_noise=0.01, noise_variance_precision="float32"),
    "sonos": dict(noise_model="SONOS", rmin=35e3, vread=0.06),
    "calibrated": dict(noise_model="generic", alpha_noise=0.01, adc_range_option="CALIBRATED"),
}

@pytest.mark.parametrize("name", sorted(NOISY))
def test_noise_pass_digitises_bit_for_bit(name, monkeypatch):
    "With the float32 product, the noise pass that digitises too gives the reference path's outputs bit for bit (same keyed draws)."
    monkeypatch.setattr(core_module, "_INTEGER_READS", False)
    W, x, input_range = case(seed=3)
    settings = {**dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX"), **NOISY[name]}
    limits = np.array([-3.0, 3.0]) if settings["adc_range_option"] == "CALIBRATED" else None
    core = AnalogCore(W, InferenceConfig(**settings), adc_limits=limits, input_range=input_range)
    assert core._noise_adc_levels() is not None
    np.testing.assert_array_equal(core.apply(x), read_reference(core, x, monkeypatch))

@needs_int32_sums
@pytest.mark.parametrize("name", sorted(NOISY))
def test_noisy_integer_read_equals_the_reference_path(name, monkeypatch):
    "With read noise on the exact currents: the reference's outputs except one ADC level where the float32 product's rounding crosses a level (rare)."
    W, x, input_range = case(seed=3, batch=400)
    settings = {**dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX"), **NOISY[name]}
    limits = np.array([-3.0, 3.0]) if settings["adc_range_option"] == "CALIBRATED" else None
    core = AnalogCore(W, InferenceConfig(**settings), adc_limits=limits, input_range=input_range)
    assert core._integer_operands(core._tiles[0]) is not None
    fast = core.apply(x)
    reference = read_reference(core, x, monkeypatch)
    differ = fast != reference
    one_level = float(adc_grid(core.tile_limits(0)[0, 0], 8)[1]) * float(core._output_weights[0])
    np.testing.assert_allclose(np.abs(fast - reference)[differ], one_level, rtol=1e-4)
    assert differ.mean() < 1e-3

def test_noisy_integer_read_is_batch_independent():
    "Keyed draws on the integer read: rows read alone, in blocks and in any order get the same outputs."
    W, x, input_range = case(seed=5, batch=300)
    core = AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", noise_model="generic",
                                         alpha_noise=0.02), input_range=input_range)
    drives = core.input_drives(x)
    whole = core.apply_drives(drives, first_row=0, read=3)
    parts = np.concatenate([core.apply_drives(drives[start:start + 70], first_row=start, read=3) for start in range(0, 300, 70)])
    np.testing.assert_array_equal(whole, parts)

def test_noise_in_row_blocks_is_the_one_pass_noise(monkeypatch):
    "`add_noise` split over threads in row blocks adds the same keyed noise as one pass over all rows."
    W, x, input_range = case(seed=6, batch=1000)
    core = AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0, noise_model="generic", alpha_noise=0.05), input_range=input_range)
    tile = core._tiles[0]
    currents = np.random.default_rng(0).normal(size=(1, 1000, W.shape[0])).astype(np.float32)
    variance = np.random.default_rng(1).uniform(0.1, 1, size=(1, 1000, W.shape[0])).astype(np.float32)
    split = currents.copy()
    monkeypatch.setattr(core_module, "_threads", lambda: 4)
    core.add_noise(split, variance, tile, 10, 2)
    monkeypatch.setattr(core_module, "_threads", lambda: 1)
    whole = currents.copy()
    core.add_noise(whole, variance, tile, 10, 2)
    np.testing.assert_array_equal(split, whole)
    assert not np.array_equal(whole, currents)

def test_noise_pass_tells_the_adc_health_counts(monkeypatch):
    "ADC health counts see the levels the noise pass digitised, as they see the reference path's codes."
    from crosssim_nb.adc_health import ADCCounts
    W, x, input_range = case(seed=7, spread=3.0)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="CALIBRATED", noise_model="generic", alpha_noise=0.01)
    totals = []
    for fast in (True, False):
        core = AnalogCore(W, config, adc_limits=np.array([-2.0, 2.0]), input_range=input_range)
        monkeypatch.setattr(core_module, "_FAST_PATHS", fast)
        counts = core._tile_grids[0].counts = ADCCounts()
        core.apply(x)
        totals.append([counts.conversions, counts.counted, counts.zero, counts.clipped_low, counts.clipped_high])
    assert totals[0] == totals[1] and totals[0][3] + totals[0][4] > 0      # (some codes clip: the counts mean something)

def test_ideal_core_checks_its_inputs_through_the_outputs():
    "An ideal core skips the input pass: NaN or inf inputs still raise the inputs' error, and an overflow the outputs' error."
    W, x, _ = case()
    core = AnalogCore(W, InferenceConfig.ideal())
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy(); y[17, 3] = bad
        with pytest.raises(ValueError, match="inputs contain NaN or inf") as raised:
            core.apply(y)
        assert not isinstance(raised.value, NonFiniteResultError)
    with pytest.raises(NonFiniteResultError):
        core.apply(np.full_like(x, 3e38))
    np.testing.assert_array_equal(core.apply(x), x @ core._linear[0])

def test_compiled_dac_is_the_numpy_dac():
    "The compiled DAC pass (taken by large inputs) equals the NumPy passes bit for bit, NaN kept and infinities clipped."
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.uniform(-1.3, 1.3, (1 << 20) + 5), [np.nan, np.inf, -np.inf, 0.5 / 127, -0.5 / 127]]).astype(np.float32)
    for dac_bits, signed in ((8, True), (8, False), (5, True)):
        compiled = quantize_inputs(values, 1.1, dac_bits, signed)                 # a million values: compiled
        passes = quantize_inputs(values, 1.1, dac_bits, signed, compiled=False)
        np.testing.assert_array_equal(compiled.view(np.int32), passes.view(np.int32))
        levels = dac_levels(dac_bits, signed)
        assert np.isnan(compiled[-5]) and compiled[-4] == 1 and compiled[-3] == (-1 if signed else 0)
        assert np.all(np.rint(compiled[:-5] * levels) * np.float32(1 / levels) == compiled[:-5])
