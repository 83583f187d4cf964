"""AnalogCore's fast paths (issue 27) against the tile-by-tile, slice-by-slice reference path (`core._FAST_PATHS = False`)
and against integer arithmetic: the exactness analysis (`tile_paths`), the exact product of a lossless periphery, and the
compiled slicing and ADC + shift-and-add pass of lossy sliced reads."""
import numpy as np
import pytest
import crosssim_nb.core as core_module
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.mapping import weight_codes, normalize_weights

def reference_core(*args, **kwargs):
    "The same core built and read on the reference path (every fast path off)."
    saved = core_module._FAST_PATHS
    core_module._FAST_PATHS = False
    try: return _ReferenceCore(AnalogCore(*args, **kwargs))
    finally: core_module._FAST_PATHS = saved

class _ReferenceCore:
    "Reads its core with the fast paths off."
    def __init__(self, core): self.core = core
    def apply(self, x):
        saved = core_module._FAST_PATHS
        core_module._FAST_PATHS = False
        try: return self.core.apply(x)
        finally: core_module._FAST_PATHS = saved

def case(seed=0, n_out=21, n_in=90, batch=40, signed=True):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_out, n_in)).astype(np.float32)
    x = rng.uniform(-1.1 if signed else 0, 1.1, size=(batch, n_in)).astype(np.float32)
    return W, x, ((-1, 1) if signed else (0, 1))

# settings whose periphery is lossless: GRANULAR ADCs wide enough for every reachable current, nothing random
LOSSLESS = {
    "balanced-slices-1bit-inputs": dict(weight_bits=8, nslices=4, input_slice_size=1, adc_bits=12),
    "balanced-2bit-inputs": dict(weight_bits=7, nslices=3, input_slice_size=2, adc_bits=14),
    "balanced-unsliced-weights": dict(weight_bits=5, nslices=1, input_slice_size=1, adc_bits=14),
    "two-sided-calibrated": dict(weight_bits=6, nslices=1, balanced_style="TWO_SIDED", input_slice_size=1, adc_bits=14,
                                 adc_range_option="CALIBRATED"),
    "calibrated-granular-limits": dict(weight_bits=8, nslices=2, input_slice_size=2, adc_bits=14, adc_range_option="CALIBRATED"),
    "pair-finite-ratio": dict(weight_bits=8, nslices=2, subtract_current_in_xbar=False, input_slice_size=1, adc_bits=14),
    "balanced-finite-ratio-partial-rows": dict(weight_bits=8, nslices=4, input_slice_size=1, adc_bits=12, nrows_max=32),
    "balanced-infinite-ratio": dict(weight_bits=8, nslices=4, input_slice_size=2, adc_bits=14, infinite_on_off_ratio=True),
    "offset-digital-offset": dict(style="OFFSET", weight_bits=8, nslices=4, input_slice_size=1, adc_bits=12, nrows_max=40),
    "offset-unit-column": dict(style="OFFSET", weight_bits=8, nslices=2, digital_offset=False, input_slice_size=1, adc_bits=14),
    "offset-infinite-ratio": dict(style="OFFSET", weight_bits=6, nslices=2, input_slice_size=2, adc_bits=14, infinite_on_off_ratio=True),
}
def granular_step(config):
    "The GRANULAR level step of a config (the current of one cell level driven by one input level)."
    from crosssim_nb.mapping import cell_levels
    return config.grange / (cell_levels(config) * (2 ** config.input_slice_size - 1))

GRANULAR = dict(dac_bits=8, input_bitslicing=True, adc_per_ibit=True, adc_range_option="GRANULAR")

@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_lossless_periphery_takes_one_exact_product(name, signed):
    "Every tile exact; the one product equals the slice-by-slice read (to float32 rounding) and the integer product of the codes."
    W, x, input_range = case(signed=signed)
    config = InferenceConfig(**{**GRANULAR, **LOSSLESS[name]})
    limits = None
    if config.adc_range_option == "CALIBRATED":   # the GRANULAR range given as limits (TWO_SIDED has no GRANULAR option)
        limits = granular_step(config) * (2 ** (config.adc_bits - 1) - 1) * np.array([-1.0, 1.0])
    core = AnalogCore(W, config, input_range=input_range, adc_limits=limits)
    paths = core.tile_paths()
    assert core.exact and (paths["path"] == "exact").all() and len(paths) == len(core.row_ranges), paths
    assert core._linear is not None                                      # one folded product, no slices × input bits
    fast, reference = core.apply(x), reference_core(W, config, input_range=input_range, adc_limits=limits).apply(x)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=2e-6 * np.abs(reference).max())
    if config.style == "BALANCED" and config.balanced_style == "ONE_SIDED":   # independent: weight codes × DAC codes (Gmin cancels)
        kw, kx = 2 ** (config.weight_bits - 1) - 1, (2 ** 7 - 1 if signed else 2 ** 8 - 1)
        codes = weight_codes(normalize_weights(W.astype(np.float64), core.w_max), config.weight_bits)
        drive_codes = np.rint(np.clip(x.astype(np.float64), input_range[0], 1) * kx)
        expected = drive_codes @ codes.T * (core.w_max / (kw * kx))
        np.testing.assert_allclose(fast, expected, rtol=0, atol=2e-6 * np.abs(expected).max())
        assert core._exact_unit is not None                                # integer levels times integer codes: exact
        np.testing.assert_array_equal(np.rint(fast / (core.w_max / (kw * kx))), drive_codes @ codes.T)

def test_isaac_tiles_are_exact():
    "ISAAC (16-bit weights in 8 slices of 2 bits, 1-bit input slices, 9-bit GRANULAR ADC per bit, 128 rows): every tile exact."
    W, x, _ = case(n_out=30, n_in=300)
    config = InferenceConfig.preset("ISAAC")
    core = AnalogCore(W, config)
    assert core.exact and len(core.row_ranges) == 3
    reference = reference_core(W, config).apply(x)
    np.testing.assert_allclose(core.apply(x), reference, rtol=0, atol=2e-6 * np.abs(reference).max())

NEARLY = {   # each a lossless configuration changed by a hair: the exactness analysis must see it
    "too few bits": (dict(adc_bits=7), "range clips"),
    "read noise": (dict(noise_model="generic", alpha_noise=1e-9), "read noise"),
    "programming error": (dict(error_model="generic", alpha_error=1e-9), "programming error"),
    "MAX range": (dict(adc_range_option="MAX"), "ADC step"),
    "stochastic rounding": (dict(stochastic_rounding=True), "stochastic rounding"),
    "circuit ADC": (dict(adc_type="sar"), "circuit ADC"),
    "current limit": (dict(icol_max=1e6), "column-current limit"),
    "drift": (dict(rmin=35e3, vread=0.06, error_model="SONOS", drift_model="SONOS", t_drift=1.0), "programming error"),
}

@pytest.mark.parametrize("name", sorted(NEARLY))
def test_nearly_lossless_takes_the_lossy_path(name):
    W, x, _ = case(seed=3)
    base = dict(**GRANULAR, weight_bits=8, nslices=4, input_slice_size=1, adc_bits=12)
    settings, reason = NEARLY[name]
    config = InferenceConfig(**{**base, **settings})
    assert AnalogCore(W, InferenceConfig(**base)).exact
    core = AnalogCore(W, config)
    paths = core.tile_paths()
    assert not core.exact and (paths["path"] == "lossy").all() and paths["reason"].str.contains(reason).all(), paths

def test_calibrated_limits_a_hair_off_are_lossy():
    "CALIBRATED limits equal to the GRANULAR range are exact; 1e-6 wider (a step above one level) or narrower (levels off the grid) are not."
    W, x, _ = case(seed=4)
    config = InferenceConfig(**{**GRANULAR, "adc_range_option": "CALIBRATED"}, weight_bits=8, nslices=4, input_slice_size=1, adc_bits=12)
    top = granular_step(config) * (2 ** 11 - 1)
    assert AnalogCore(W, config, adc_limits=np.array([-top, top])).exact
    wide = AnalogCore(W, config, adc_limits=np.array([-top, top]) * (1 + 1e-6))
    assert not wide.exact and "ADC step 1.000001 levels > 1 level" in wide.tile_paths()["reason"][0]
    narrow = AnalogCore(W, config, adc_limits=np.array([-top, top]) * (1 - 1e-6))
    assert not narrow.exact and "not on the current grid" in narrow.tile_paths()["reason"][0]

def test_range_that_just_covers_the_worst_column_is_exact():
    "A column reaching exactly the top code is exact; one more level on one device clips: lossy (decided from the matrix)."
    n_in, bits = 20, 6                                       # 2^(6-1) - 1 = 31 top code; 1-bit slices, 2-bit weight slices: 3 per row
    W = np.zeros((2, n_in)); W[0, :10] = 1.0                 # column 0 reaches 10 rows × 3 levels = 30 codes
    config = InferenceConfig(**GRANULAR, weight_bits=3, nslices=1, input_slice_size=1, adc_bits=bits)
    assert AnalogCore(W, config).exact
    W[0, 10] = 1.0; W[0, 11] = 0.5                           # 11 rows × 3 + 1.5 → 35 codes: beyond 31
    core = AnalogCore(W, config)
    assert not core.exact and "clips" in core.tile_paths()["reason"][0]

def test_partial_tiles_decide_alone():
    "Row tiles decide one by one: a tile whose rows reach past the range is lossy while the others stay exact."
    W = np.full((3, 64), 0.01); W[:, :16] = 1.0              # tile 0 (rows 0-15): large weights; tiles 1-3 small
    config = InferenceConfig(**GRANULAR, weight_bits=3, nslices=1, input_slice_size=1, adc_bits=6, nrows_max=16)
    paths = AnalogCore(W, config).tile_paths()
    assert list(paths["path"]) == ["lossy", "exact", "exact", "exact"], paths

LOSSY = {   # lossy sliced reads: the compiled slicing and ADC + shift-and-add against the reference path
    "slices-max": dict(nslices=4, adc_range_option="MAX"),
    "input-bits-per-bit": dict(input_bitslicing=True, adc_per_ibit=True, adc_range_option="MAX", adc_bits=6),
    "input-2bit-slices-and-weight-slices": dict(input_bitslicing=True, input_slice_size=2, adc_per_ibit=True, nslices=2,
                                                adc_range_option="MAX", adc_bits=7),
    "input-bits-one-adc": dict(input_bitslicing=True, adc_per_ibit=False, adc_range_option="MAX"),
    "tiles-partial-rows": dict(nslices=3, weight_bits=7, nrows_max=37, adc_range_option="MAX", adc_bits=6),
    "calibrated-per-bit": dict(input_bitslicing=True, adc_per_ibit=True, nslices=2, adc_range_option="CALIBRATED", adc_bits=6),
    "granular-too-few-bits": dict(input_bitslicing=True, adc_per_ibit=True, nslices=4, adc_range_option="GRANULAR", adc_bits=5),
    "offset-slices": dict(style="OFFSET", nslices=2, adc_range_option="MAX"),
    "offset-unit-column": dict(style="OFFSET", digital_offset=False, nslices=2, adc_range_option="MAX"),
    "pair-slices": dict(subtract_current_in_xbar=False, nslices=2, adc_range_option="MAX"),
    "pair-infinite-ratio-bits": dict(subtract_current_in_xbar=False, nslices=2, input_bitslicing=True, adc_per_ibit=True,
                                     adc_range_option="MAX", infinite_on_off_ratio=True),
    "noisy-slices": dict(nslices=2, adc_range_option="MAX", noise_model="generic", alpha_noise=0.02),
    "infinite-ratio-bits": dict(input_bitslicing=True, adc_per_ibit=True, nslices=2, adc_range_option="MAX", infinite_on_off_ratio=True),
}

@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("name", sorted(LOSSY))
def test_lossy_sliced_reads_equal_the_reference_path(name, signed):
    "The compiled slicing and ADC pass give the reference path's ADC levels; the sums differ only in float32 rounding order."
    W, x, input_range = case(seed=5, signed=signed, batch=300)
    settings = {**dict(weight_bits=8, dac_bits=8, adc_bits=8), **LOSSY[name]}
    limits = None
    if settings["adc_range_option"] == "CALIBRATED":
        n_inputs = AnalogCore(W, InferenceConfig(**{**settings, "adc_range_option": "MAX"}), input_range=input_range).n_input_slices
        limits = np.broadcast_to(np.array([-3.0, 3.0]), (settings["nslices"], n_inputs, 2)) / 2.0 ** np.arange(n_inputs)[None, :, None]
    config = InferenceConfig(**settings)
    core = AnalogCore(W, config, adc_limits=limits, input_range=input_range)
    assert not core.exact
    fast = core.apply(x)
    reference = reference_core(W, config, adc_limits=limits, input_range=input_range).apply(x)
    close = np.isclose(fast, reference, rtol=0, atol=3e-6 * np.abs(reference).max())
    if core._integer is None: assert close.all()      # float32 products: the same ADC codes, sums in another order
    else:   # exact integer currents: only where a current sits exactly on an ADC tie may the float32 product round it otherwise
        assert close.mean() > 0.8 and not (~close & ~outputs_with_ties(core, x)).any()

def outputs_with_ties(core, x):
    "Which outputs `(batch, n_out)` have an ADC input exactly on a rounding tie (the exact integer currents, float64)."
    from crosssim_nb.dac import slice_inputs
    config, drives = core.config, core.input_drives(x)
    mask = 2 ** config.input_slice_size - 1
    digits = (slice_inputs(drives, config.dac_bits, core.signed, config.input_slice_size) * mask if config.input_bitslicing
              else drives[None] * (2 ** (config.dac_bits - 1) - 1 if core.signed else 2 ** config.dac_bits - 1))
    levels, unit = core._integer
    tied = np.zeros((x.shape[0], core.n_out), dtype=bool)
    for index, (start, stop) in enumerate(core.row_ranges):
        currents = np.rint(digits[:, :, start:stop]).astype(np.int64) @ levels[index].astype(np.int64)   # (k, b, blocks·n_out)
        shift, inverse = core._fused_adc(index)[:2]
        blocks = inverse.shape[1]
        codes = (currents.reshape(*currents.shape[:2], blocks, core.n_out) * unit[:, None, None, None].astype(np.float64)
                 - shift[:, None, :, None]) * (1 / (1 / inverse[:, None, :, None].astype(np.float64)))
        tied |= (np.abs(codes - np.floor(codes) - 0.5) < 1e-5).any(axis=(0, 2))
    return tied

INTEGER = ["slices-max", "pair-infinite-ratio-bits", "input-bits-per-bit", "input-2bit-slices-and-weight-slices", "tiles-partial-rows", "calibrated-per-bit",
           "granular-too-few-bits", "infinite-ratio-bits"]

@pytest.mark.parametrize("name", INTEGER)
def test_integer_products_equal_float32_products_of_the_same_integers(name, monkeypatch):
    "The int8 product (onnxruntime) and a float32 product of the same integer operands give the same outputs bit for bit."
    W, x, input_range = case(seed=8, batch=200)
    settings = {**dict(weight_bits=8, dac_bits=8, adc_bits=8), **LOSSY[name]}
    limits = None
    if settings["adc_range_option"] == "CALIBRATED":
        limits = np.broadcast_to(np.array([-3.0, 3.0]), (settings["nslices"], 7, 2)) / 2.0 ** np.arange(7)[None, :, None]
    core = AnalogCore(W, InferenceConfig(**settings), adc_limits=limits, input_range=input_range)
    assert core._integer is not None
    with_int8 = core.apply(x)
    monkeypatch.setattr(core_module, "_INTEGER_READS", False)
    np.testing.assert_array_equal(with_int8, core.apply(x))

def test_integer_reads_only_where_no_int8_kernel_can_saturate():
    "Unsliced 8-bit weights (127 levels) with 8-bit DAC codes could overflow AVX2's int16 pair sums: the float32 product runs."
    W, x, _ = case(seed=9)
    assert AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX"))._integer is None
    assert AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nslices=2))._integer is not None
    one_bit = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", input_bitslicing=True, adc_per_ibit=True)
    assert AnalogCore(W, one_bit)._integer is not None          # 2·129·127 = 32766: safe
    assert AnalogCore(W, one_bit.replace(input_slice_size=2))._integer is None   # 2·131·127 > 32767

def test_sliced_noise_stays_keyed_per_row():
    "A noisy sliced read through the compiled pass does not depend on how the batch is split (keyed draws unchanged)."
    W, x, _ = case(seed=6, batch=120)
    core = AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nslices=2, input_bitslicing=True,
                                         adc_per_ibit=True, noise_model="generic", alpha_noise=0.05))
    drives = core.input_drives(x)
    whole = core.apply_drives(drives, first_row=0)
    pieces = np.concatenate([core.apply_drives(drives[s:s + 7], first_row=s) for s in range(0, 120, 7)])
    np.testing.assert_array_equal(pieces, whole)
    saved = core_module._FAST_PATHS
    core_module._FAST_PATHS = False
    try: reference = core.apply_drives(drives, first_row=0)
    finally: core_module._FAST_PATHS = saved
    np.testing.assert_allclose(whole, reference, rtol=0, atol=3e-6 * np.abs(reference).max())

def test_compiled_slices_equal_dac_slice_inputs():
    "The one-pass slicer gives `dac.slice_inputs`' drives bit for bit (signed and unsigned, 1- to 3-bit slices)."
    from crosssim_nb.dac import slice_inputs
    for signed in (True, False):
        for size in (1, 2, 3):
            W, x, input_range = case(seed=7, signed=signed)
            core = AnalogCore(W, InferenceConfig(dac_bits=8, input_bitslicing=True, input_slice_size=size, adc_bits=0),
                              input_range=input_range)
            drives = core.input_drives(x)
            np.testing.assert_array_equal(core._slice(drives), slice_inputs(drives, 8, signed, size))

def test_compiled_adc_pass_tells_the_health_counts(monkeypatch):
    "The ADC health counts (adc_health) see the compiled pass's codes: the same tallies as the general path's digitisation."
    from crosssim_nb.adc_health import core_counts
    W, x, _ = case(seed=10, batch=30)                 # 30 vectors × 21 outputs × 2 slices × 7 bits: below the sampling threshold
    x[:, :5] = 0.0                                    # some zero currents
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=5, adc_range_option="CALIBRATED", nslices=2, input_bitslicing=True,
                             adc_per_ibit=True, nrows_max=40, error_model="generic", alpha_error=0.01)   # (errors: float32 products)
    tallies = []
    for fast in (True, False):
        monkeypatch.setattr(core_module, "_FAST_PATHS", fast)
        core = AnalogCore(W, config, adc_limits=np.array([-0.5, 1.5]))   # asymmetric and narrow: codes at both ends
        assert core._integer is None
        counts = core_counts(core)
        core.apply(x)
        tallies.append(counts.as_dict())
    assert tallies[0] == tallies[1] and tallies[0]["zero"] > 0 and tallies[0]["clipped_high"] > 0 and tallies[0]["clipped_low"] > 0, tallies

# circuit ADCs on sliced reads: one compiled convert-and-add pass per row tile (`_fused_circuit`), reference columns once
CIRCUIT = {
    "isaac-sar-unit-column": dict(preset="ISAAC-SarADC", nrows_max=40, ncols_max=8),
    "isaac-sar-digital-offset": dict(preset="ISAAC-SarADC", digital_offset=True, nrows_max=64),
    "isaac-sar-component-errors": dict(preset="ISAAC-SarADC", sigma_capacitor=0.01, sigma_comparator=0.002, nrows_max=64, ncols_max=16),
    "prime-ramp-separate-sides": dict(preset="PRIME", adc_range_option="MAX", nrows_max=50),
    "prime-infinite-ratio-2bit-inputs": dict(preset="PRIME", adc_range_option="MAX", infinite_on_off_ratio=True, input_slice_size=2),
    "balanced-sar-partial-rows": dict(weight_bits=8, nslices=2, adc_type="sar", adc_bits=8, adc_range_option="MAX", dac_bits=8,
                                      input_bitslicing=True, adc_per_ibit=True, nrows_max=37),
    "pipeline-unsliced-inputs": dict(weight_bits=8, nslices=2, adc_type="pipeline", adc_bits=8, adc_range_option="MAX", dac_bits=8),
    "offset-ramp-finite-ratio": dict(style="OFFSET", weight_bits=8, nslices=2, adc_type="ramp", adc_bits=7, adc_range_option="MAX",
                                     dac_bits=6, input_bitslicing=True, adc_per_ibit=True, digital_offset=False, nrows_max=45),
}

def circuit_config(settings):
    settings = dict(settings)
    preset = settings.pop("preset", None)
    return InferenceConfig.preset(preset).replace(**settings) if preset else InferenceConfig(**settings)

@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("name", sorted(CIRCUIT))
def test_circuit_adc_sliced_reads_equal_the_reference_path(name, signed):
    "Circuit ADCs through the compiled pass give the reference path's levels (each current through its own ADC, unit columns included); only the float32 order of the sums differs."
    W, x, input_range = case(seed=11, signed=signed, batch=70)
    config = circuit_config(CIRCUIT[name])
    core = AnalogCore(W, config, input_range=input_range)
    assert all(core._fused_circuit(index) is not None for index in range(len(core.row_ranges)))
    fast = core.apply(x)
    reference = reference_core(W, config, input_range=input_range).apply(x)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=3e-6 * np.abs(reference).max())

def test_circuit_pass_follows_redrawn_adcs():
    "A new programming redraws the ADCs' component errors: the compiled pass reads the new transfers, as the reference path does."
    W, x, input_range = case(seed=12, batch=30)
    config = circuit_config(CIRCUIT["isaac-sar-component-errors"])
    core = AnalogCore(W, config, input_range=input_range)
    first = core.apply(x)
    core.program(1)
    second = core.apply(x)
    reference = reference_core(W, config, input_range=input_range)
    reference.core.program(1)
    expected = reference.apply(x)
    assert not np.array_equal(first, second)
    np.testing.assert_allclose(second, expected, rtol=0, atol=3e-6 * np.abs(expected).max())

def test_circuit_pass_keeps_nan():
    "A NaN current stays NaN through the compiled conversion, as through `TransferTable.convert`."
    W, x, input_range = case(seed=13, batch=5)
    core = AnalogCore(W, circuit_config(CIRCUIT["prime-ramp-separate-sides"]), input_range=input_range)
    drives = core._slice(core.input_drives(x))
    currents = core._read(drives, core._tiles[0])
    currents[0, 2, 3] = np.nan
    out = core.tile_output(0, currents, None)
    assert np.isnan(out[2]).any() and np.isfinite(np.delete(out, 2, axis=0)).all()

# the blocked integer read (`_integer_tile_output`) and the compiled ADC pass's rounding
BLOCKED = dict(weight_bits=8, dac_bits=8, adc_bits=6, nslices=4, input_bitslicing=True, adc_per_ibit=True, adc_range_option="MAX", nrows_max=37)

@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_integer_reads_do_not_depend_on_blocks_or_threads(signed, monkeypatch):
    "Blocks of any size, read by one thread or several, give the same outputs bit for bit (partial row tiles, 8 input bits, 4 slices)."
    W, x, input_range = case(seed=15, batch=150, signed=signed)
    core = AnalogCore(W, InferenceConfig(**BLOCKED), input_range=input_range)
    assert core._integer is not None and len(core.row_ranges) == 3
    whole = core.apply(x)
    monkeypatch.setattr(core_module, "_INTEGER_BLOCK_BYTES", 1)          # one vector per block
    monkeypatch.setattr(core_module, "_INTEGER_GEMM_ROWS", 1)
    np.testing.assert_array_equal(core.apply(x), whole)
    monkeypatch.setattr(core_module, "_threads", lambda: 1)               # every block in this thread
    np.testing.assert_array_equal(core.apply(x), whole)
    monkeypatch.setattr(core_module, "_INTEGER_READS", False)             # the same integers in a float32 product
    np.testing.assert_array_equal(core.apply(x), whole)

def test_compiled_adc_pass_rounds_as_adc_grid_digitize():
    "With unit weights the compiled pass's levels are `ADCGrid.digitize`'s bit for bit — ties, clipping and an offset range included (no fast-math contraction)."
    from crosssim_nb.adc import ADCGrid, adc_grid
    rng = np.random.default_rng(16)
    for limits in ([-0.7, 1.3], [-2.0, 2.0]):                            # asymmetric (an offset) and symmetric
        offset, step, low, high = (np.float32(v) for v in adc_grid(np.array(limits), 5))
        codes = rng.integers(int(low) - 3, int(high) + 4, size=(1, 64, 24))
        currents = ((codes + rng.choice([-0.5, 0.5, 0.25, 0.0], size=codes.shape)) * step + offset).astype(np.float32)   # ties
        expected = ADCGrid(np.array(limits), 5).digitize(currents.copy())[0]
        grid = [np.full((1, 1), value, dtype=np.float32) for value in (offset, np.float32(1) / step, low, high, step, offset, 0)]
        out, tally = np.empty((64, 24), dtype=np.float32), np.zeros((1, 3), dtype=np.int64)
        core_module._sliced_kernels()[1](currents, np.ones(1, dtype=np.float32), *grid, 24, 0, out, tally, 0, 64)
        np.testing.assert_array_equal(out, expected)

def test_health_counts_sample_large_reads():
    "Above `SAMPLE_ABOVE` conversions the compiled pass counts every `SAMPLE_STRIDE`-th vector of each block, as `ADCCounts.add` samples: every conversion told, shares close to the general path's."
    from crosssim_nb.adc_health import core_counts, SAMPLE_STRIDE
    W, x, input_range = case(seed=17, batch=1500, signed=False)
    config = InferenceConfig(**{**BLOCKED, "adc_range_option": "CALIBRATED"})
    shares = []
    for fast in (True, False):
        saved = core_module._FAST_PATHS
        core_module._FAST_PATHS = fast
        try:
            core = AnalogCore(W, config, adc_limits=np.array([-0.2, 1.0]), input_range=input_range)
            counts = core_counts(core)
            core.apply(x)
        finally: core_module._FAST_PATHS = saved
        tallies = counts.as_dict()
        assert (core._integer is not None) == fast
        assert tallies["conversions"] == 1500 * 21 * 4 * 8 * 3 and tallies["counted"] < tallies["conversions"] / SAMPLE_STRIDE * 1.1
        shares.append(np.array([tallies[name] / tallies["counted"] for name in ("zero", "clipped_low", "clipped_high")]))
    assert shares[0][0] > 0.05 and shares[0][2] > 0.001, shares
    np.testing.assert_allclose(shares[0], shares[1], rtol=0.1, atol=0.005)

def test_digit_words_equal_digit_by_digit():
    "The eight-at-a-time digit pass gives the digit-by-digit pass's uint8 operand bit for bit (signed and unsigned, 1- to 3-bit slices, whole codes)."
    from crosssim_nb.dac import dac_levels
    integer_digits, integer_digit_words = core_module._digit_kernel()
    rng = np.random.default_rng(18)
    for signed in (True, False):
        levels = dac_levels(8, signed)
        drives = (rng.integers(-levels if signed else 0, levels + 1, size=(30, 50)) / levels).astype(np.float32)
        drives[rng.random(drives.shape) < 0.3] = 0
        for size, mask in ((1, 1), (2, 3), (3, 7), (8, -1)):
            if mask == -1: drives = np.clip(drives, -127 / levels, 127 / levels)     # whole codes: at most 127 (`_integer_levels`)
            slices = -(-(7 if signed else 8) // size) if mask != -1 else 1
            by_digit, by_word = np.empty((2, slices, 30, 40), dtype=np.uint8)
            integer_digits(drives, np.float32(levels), mask, size, signed, 5, 45, by_digit, 0, 30)
            integer_digit_words(drives, np.float32(levels), mask, size, signed, 5, 45, by_word.view(np.uint64), 0, 30)
            np.testing.assert_array_equal(by_word, by_digit)

@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_whole_word_tiles_equal_the_reference_path(signed):
    "Row tiles of a multiple of 8 rows take the eight-at-a-time digit pass: the reference path's outputs, but where an ADC tie rounds otherwise."
    W, x, input_range = case(seed=19, n_in=128, batch=200, signed=signed)
    config = InferenceConfig(**{**BLOCKED, "nrows_max": 64, "input_slice_size": 2, "nslices": 2})
    core = AnalogCore(W, config, input_range=input_range)
    assert core._integer is not None and [stop - start for start, stop in core.row_ranges] == [64, 64]
    fast, reference = core.apply(x), reference_core(W, config, input_range=input_range).apply(x)
    close = np.isclose(fast, reference, rtol=0, atol=3e-6 * np.abs(reference).max())
    assert close.mean() > 0.8 and not (~close & ~outputs_with_ties(core, x)).any()
