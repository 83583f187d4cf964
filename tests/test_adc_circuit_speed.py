"""The fast circuit-ADC conversion (`TransferTable.convert`, one compiled pass; `lookup` on the GPU) against the reference
conversion, bit for bit: each ADC's float64 `Transfer` (a searchsorted over its breakpoints) applied to the normalised
float32 input, its code's level scaled back by Vref. Over every circuit type with and without component errors, several
resolutions, ADCs shared by column groups, per-(input slice, weight slice) ranges, inputs exactly on the breakpoints,
the ISAAC-SarADC and PRIME presets inside AnalogCore, and the split between CPUs. Correctness only: timing is in
benchmarks/bench_adc_circuits.py."""
import numpy as np
import pytest
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb import adc_circuits
from crosssim_nb.adc_circuits import CircuitADCGrid, circuit_levels, float32_below
from crosssim_nb.config import CIRCUIT_ADC_FIELDS

ERRORS = dict(sigma_capacitor=0.02, sigma_comparator=0.02, sigma_c1=0.02, sigma_c2=0.02, sigma_cpar=0.02)


def config_for(kind, bits, errors, **changes):
    "A circuit ADC configuration of type `kind`; with `errors`, every component error the type draws at 2 %."
    settings = {"gain_db": 60.0, "group_size": 3, **(ERRORS if errors else {}), **changes}
    return InferenceConfig(adc_bits=bits, adc_type=kind, **{k: v for k, v in settings.items()
                                                             if k not in CIRCUIT_ADC_FIELDS or kind in CIRCUIT_ADC_FIELDS[k]})


def reference_digitize(grid, current, part):
    "The reference conversion: float32 clip and normalisation (as the grid does them), then each column's own Transfer."
    low, high, inverse, vref = (np.broadcast_to(np.asarray(a, np.float32), (current.shape[0], 1, current.shape[2], 1))
                                for a in (grid.low, grid.high, grid.inverse_vref, grid.vref))
    x = np.clip(current, low, high) * inverse                                  # float32, as the kernel computes it
    levels = circuit_levels(grid.adc_bits).astype(np.float32)
    adcs = np.broadcast_to(grid.adc_index[part], current.shape[2:])
    out = np.empty_like(current)
    for s in range(current.shape[2]):
        for n in range(current.shape[3]):
            transfer = grid.transfers[int(adcs[s, n])]
            out[:, :, s, n] = levels[transfer(x[:, :, s, n].astype(np.float64))] * vref[:, :, s, 0]
    return out


def make_grid(config, columns=10, slices=2, k_slices=3, seed=0):
    "One array's ADCs over `slices` weight slices, with a different (asymmetric) range per (input slice, weight slice)."
    rng = np.random.default_rng(seed)
    upper = 2.0 ** rng.integers(-1, 3, (k_slices, slices))                    # Vref a power of two: ties stay exact
    lower = -upper * rng.choice([1.0, 0.5, 0.25], (k_slices, slices))
    limits = np.stack([lower, upper], axis=-1)[:, None, :, None, :]
    column = np.tile(np.arange(columns), (slices, 1))
    grid = CircuitADCGrid(limits, config, [columns] * slices, {"difference": (np.tile(np.arange(slices)[:, None], (1, columns)), column)})
    grid.program(np.random.default_rng(seed + 1))
    return grid


def probe_currents(grid, batch, rng):
    "Random currents past both ends of every range, and currents exactly on (and one float32 step above) every breakpoint."
    k_slices, slices, columns = grid.low.shape[0], grid.low.shape[2], len(grid.adc_index["difference"][0])
    vref = np.asarray(grid.vref, np.float32)
    random = rng.uniform(-1.3, 1.3, (k_slices, batch, slices, columns)).astype(np.float32) * vref
    points = float32_below(np.concatenate([np.clip(t.breakpoints, -1, 1) for t in grid.transfers[:8]]))
    points = np.concatenate([points, np.nextafter(points, np.float32(2))])
    on_breakpoints = np.resize(points, (k_slices, -(-len(points) // (k_slices * slices * columns)), slices, columns)) * vref
    return np.concatenate([random, on_breakpoints.astype(np.float32)], axis=1)


@pytest.mark.parametrize("kind", ["ramp", "sar", "pipeline", "cyclic"])
@pytest.mark.parametrize("bits", [1, 4, 9])
@pytest.mark.parametrize("errors", [False, True])
def test_fast_conversion_equals_the_transfers_bit_for_bit(kind, bits, errors):
    config = config_for(kind, bits, errors, split_cdac=bits >= 2)
    grid = make_grid(config, seed=bits)
    current = probe_currents(grid, 200, np.random.default_rng(bits))
    expected = reference_digitize(grid, current, "difference")
    np.testing.assert_array_equal(grid.digitize(current.copy(), "difference"), expected)
    if errors and kind != "ramp": assert grid.table.n_adcs == 2 * 4        # 4 groups of 3 columns per slice, each its own ADC


def test_many_passes_and_shared_adcs():
    "A 12-bit pipeline with errors needs several compares per bucket; 64 ADCs of one column each: still bit for bit."
    config = config_for("pipeline", 12, True, group_size=1)
    grid = make_grid(config, columns=32, slices=2, k_slices=2, seed=5)
    assert grid.table.passes > 1
    current = probe_currents(grid, 64, np.random.default_rng(5))
    np.testing.assert_array_equal(grid.digitize(current.copy(), "difference"), reference_digitize(grid, current, "difference"))


def test_split_between_cpus_and_nan(monkeypatch):
    "A read large enough to be split between threads gives the same levels; a NaN current stays NaN (not a level)."
    grid = make_grid(config_for("sar", 8, True), columns=10, slices=2, k_slices=3)
    current = probe_currents(grid, 500, np.random.default_rng(7))
    current[1, 3, 1, 4] = np.nan
    expected = reference_digitize(grid, np.nan_to_num(current), "difference")
    expected[1, 3, 1, 4] = np.nan
    monkeypatch.setattr(adc_circuits, "_PARALLEL_CONVERSIONS", 1000)
    monkeypatch.setattr(adc_circuits, "available_cpus", lambda: 3)
    np.testing.assert_array_equal(grid.digitize(current.copy(), "difference"), expected)


def test_float64_currents_and_a_single_range():
    "float64 currents are converted from their float32 copy (the input is left alone); one range for every slice."
    config = config_for("ramp", 6, True)
    grid = CircuitADCGrid(np.array([-3.0, 3.0])[None, None, None, None, :], config, [7], {"difference": (np.zeros((1, 7), int), np.arange(7)[None])})
    grid.program(np.random.default_rng(3))
    current = np.random.default_rng(4).uniform(-4, 4, (2, 50, 1, 7))
    kept = current.copy()
    out = grid.digitize(current, "difference")
    np.testing.assert_array_equal(current, kept)
    np.testing.assert_array_equal(out, reference_digitize(grid, current.astype(np.float32), "difference"))


def test_per_column_limits_are_refused():
    config = config_for("sar", 4, False)
    limits = np.stack([-np.ones(5), np.ones(5)], axis=-1)[None, None, None, :, :]       # one range per column
    grid = CircuitADCGrid(limits, config, [5], {"difference": (np.zeros((1, 5), int), np.arange(5)[None])})
    grid.program(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"one range per \(input slice, weight slice\).*shape \(1, 1, 1, 5, 2\)"):
        grid.digitize(np.zeros((1, 2, 1, 5), np.float32), "difference")


@pytest.mark.parametrize("preset, changes", [("ISAAC-SarADC", {}), ("PRIME", {}),
                                             ("ISAAC-SarADC", dict(sigma_capacitor=0.01, sigma_comparator=0.01, group_size=16)),
                                             ("PRIME", dict(sigma_capacitor=0.01, sigma_comparator=0.01))])
def test_presets_in_a_core_equal_the_reference_conversion(preset, changes, monkeypatch):
    """Every tile and part of a preset's core (ISAAC-SarADC: OFFSET unit column, 16 input bits, 8 weight slices, 2 row
    tiles; PRIME: G+ and G- digitised separately, 3-bit input slices): the core's outputs with the fast conversion equal
    those with every conversion done by the reference, bit for bit, on the general read path; the core's compiled
    convert-and-add pass (`_fused_circuit`) gives the same levels, summed in another float32 order."""
    rng = np.random.default_rng(11)
    config = InferenceConfig.preset(preset, **changes)
    limits = None
    if config.adc_range_option == "CALIBRATED":
        from crosssim_nb.crosssim_compat import preset_adc_limits
        limits = np.array(preset_adc_limits(preset))
    core = AnalogCore(rng.normal(size=(40, 200)), config, adc_limits=limits, name=preset)
    x = rng.uniform(-1, 1, (24, 200)).astype(np.float32)
    assert core._fused_circuit(0) is not None
    fused = core.apply(x)
    monkeypatch.setattr(AnalogCore, "_fused_circuit", lambda self, index: None)     # the general path: digitize per part
    fast = core.apply(x)
    np.testing.assert_allclose(fused, fast, rtol=0, atol=3e-6 * np.abs(fast).max())
    calls = []
    def reference(grid, current, part):
        calls.append(part)
        return reference_digitize(grid, current.astype(np.float32), part)
    monkeypatch.setattr(CircuitADCGrid, "digitize", reference)
    np.testing.assert_array_equal(core.apply(x), fast)
    assert len(calls) >= 2 * len(core.row_ranges)                             # every tile, both parts


def test_gpu_lookup_equals_the_reference():
    "The elementwise path (CuPy; here its CPU stand-in) uses the same float32-below breakpoints: bit for bit too."
    import fake_cupy
    config = config_for("pipeline", 7, True)
    limits = np.array([-2.0, 4.0])[None, None, None, None, :]
    cpu = CircuitADCGrid(limits, config, [9], {"difference": (np.zeros((1, 9), int), np.arange(9)[None])})
    gpu = CircuitADCGrid(limits, config, [9], {"difference": (np.zeros((1, 9), int), np.arange(9)[None])}, xp=fake_cupy)
    cpu.program(np.random.default_rng(8)); gpu.program(np.random.default_rng(8))
    current = probe_currents(cpu, 100, np.random.default_rng(9))
    expected = reference_digitize(cpu, current, "difference")
    np.testing.assert_array_equal(gpu.digitize(fake_cupy.asarray(current), "difference").get(), expected)
    np.testing.assert_array_equal(cpu.digitize(current.copy(), "difference"), expected)


def test_conversion_inside_worker_threads_does_not_wait_on_its_own_pool():
    "A network converts inside its chunk workers (the shared pool's threads): there the conversion runs in one piece."
    from crosssim_nb.backend import thread_pool
    grid = make_grid(config_for("sar", 8, False), columns=64, slices=4, k_slices=8)
    current = np.random.default_rng(12).uniform(-2, 2, (8, 300, 4, 64)).astype(np.float32)    # 614,400 conversions
    expected = reference_digitize(grid, current, "difference")
    futures = [thread_pool(2).submit(grid.digitize, current.copy(), "difference") for _ in range(2)]
    for future in futures: np.testing.assert_array_equal(future.result(timeout=120), expected)
