"""The circuit-ADC read pass of sliced reads (`AnalogCore._fused_circuit` / `_convert_and_add`, issue 27 item 3) against
an independent computation of what it must give: every column's current clipped and normalised in float32, its code found
by a search of its own ADC's float64 `Transfer`, its level scaled back, the reference column's level (OFFSET's unit
column, G− read apart) or the offset current subtracted, and the results added in the pass's float32 order, so the two
agree bit for bit. Over ISAAC-SarADC (unit columns, one and several column tiles; digital offset), PRIME (G+ and G−
apart, 3- and 2-bit input slices, finite and infinite on/off ratio), ramp, SAR, pipeline and cyclic ADCs with component
errors, tiles with partial rows and signed and unsigned inputs. Also: the fine table (`TransferTable.fine_levels`) gives
`TransferTable.convert`'s level for inputs on and beside every breakpoint, and holds most levels outright."""
import numpy as np
import pytest
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.adc_circuits import TransferTable, circuit_levels, draw_transfers, float32_below
from crosssim_nb.core import MappingMode

ERRORS = dict(ramp=dict(sigma_capacitor=0.01, sigma_comparator=0.01), sar=dict(sigma_capacitor=0.01, sigma_comparator=0.01),
              pipeline=dict(sigma_c1=0.01, sigma_c2=0.01, sigma_comparator=0.01), cyclic=dict(sigma_c1=0.01, sigma_c2=0.01, sigma_comparator=0.01))
SLICED = dict(weight_bits=8, nslices=2, dac_bits=6, input_bitslicing=True, adc_per_ibit=True, adc_bits=7, adc_range_option="MAX")

CASES = {   # name -> (preset or None, settings)
    "isaac-sar-one-column-tile": ("ISAAC-SarADC", dict(nrows_max=40)),
    "isaac-sar-column-tiles": ("ISAAC-SarADC", dict(nrows_max=40, ncols_max=8)),
    "isaac-sar-digital-offset": ("ISAAC-SarADC", dict(digital_offset=True, nrows_max=64)),
    "isaac-sar-component-errors": ("ISAAC-SarADC", dict(sigma_capacitor=0.01, sigma_comparator=0.002, nrows_max=64, group_size=16)),
    "prime": ("PRIME", dict(adc_range_option="MAX", nrows_max=50)),
    "prime-2bit-infinite-ratio": ("PRIME", dict(adc_range_option="MAX", infinite_on_off_ratio=True, input_slice_size=2)),
    "ramp-errors-partial-rows": (None, dict(SLICED, adc_type="ramp", nrows_max=37, **ERRORS["ramp"])),
    "sar-errors-offset-unit-column": (None, dict(SLICED, adc_type="sar", group_size=4, style="OFFSET", digital_offset=False,
                                                 nrows_max=45, **ERRORS["sar"])),
    "pipeline-errors-pair": (None, dict(SLICED, adc_type="pipeline", group_size=4, subtract_current_in_xbar=False, **ERRORS["pipeline"])),
    "cyclic-errors-1bit-inputs": (None, dict(SLICED, adc_type="cyclic", group_size=8, input_slice_size=1, nrows_max=33, **ERRORS["cyclic"])),
}


def config_of(name):
    preset, settings = CASES[name]
    return InferenceConfig.preset(preset).replace(**settings) if preset else InferenceConfig(**settings)


def reference_levels(grid, x, adcs):
    "Level (units of Vref) of every normalised float32 input `x` (..., columns) through the float64 Transfer of its column's ADC."
    out = np.empty_like(x)
    levels = circuit_levels(grid.adc_bits).astype(np.float32)
    for j, adc in enumerate(adcs):
        out[..., j] = levels[grid.transfers[adc](x[..., j].astype(np.float64))]
    return np.where(np.isnan(x), x, out)


def reference_tile_output(core, index, currents, drive_sums):
    "What the pass must give, computed column by column with numpy float32 operations in the pass's order."
    grid, plan = core._tile_grids[index], core._fused_circuit(index)
    k, b, columns = currents.shape
    slices, n_out = core.n_weight_slices, core.n_out
    ranges = grid.conversion_ranges(k, slices)
    column_slice = plan["column_slice"]
    offset = core.mode is MappingMode.OFFSET
    slice_offset = np.asarray(core._offset_levels[:, 0], np.float32) if offset else np.zeros(slices, np.float32)
    add = slice_offset[column_slice][None, None, :] * drive_sums if offset else np.float32(0)   # (k, b, columns) float32
    low, high, inverse = (ranges[:, column_slice, i][:, None, :] for i in range(3))
    x = np.minimum(np.maximum(currents + add, low), high) * inverse
    levels = reference_levels(grid, x, column_adcs(core, index))
    reference = plan["reference"]
    total = np.zeros((b, n_out), np.float32)
    for kk in range(k):
        for s in range(slices):
            vref, w = ranges[kk, s, 3], plan["weight"][kk, s]
            main = levels[kk, :, s * n_out:(s + 1) * n_out] * vref
            if plan["reference_kind"] == 0:
                y = main - slice_offset[s] * drive_sums[kk, :, 0][:, None] if plan["subtract_offset"] else main
            elif plan["reference_kind"] == 1: y = main - levels[kk, :, reference[s, 0]][:, None] * vref
            else: y = main - levels[kk][:, reference[s]] * vref
            total += y * w
    return total


def column_adcs(core, index):
    "Index into `grid.transfers` of the ADC that digitises each column of the tile, in the tile's column order."
    grid, slices, n_out = core._tile_grids[index], core.n_weight_slices, core.n_out
    main = "column" if core.mode is MappingMode.OFFSET else ("positive" if "positive" in grid.adc_index else "difference")
    parts = [np.broadcast_to(grid.adc_index[main], (slices, n_out)).ravel()]
    if "reference" in grid.adc_index:
        first = [start for start, _ in core.col_ranges]
        parts.append(np.broadcast_to(grid.adc_index["reference"], (slices, n_out))[:, first].ravel())
    elif "negative" in grid.adc_index: parts.append(np.broadcast_to(grid.adc_index["negative"], (slices, n_out)).ravel())
    return np.concatenate(parts)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_circuit_pass_equals_each_column_through_its_transfer(name, signed):
    rng = np.random.default_rng(21)
    W = rng.normal(size=(19, 70)).astype(np.float32)
    x = rng.uniform(-1.1 if signed else 0, 1.1, (33, 70)).astype(np.float32)
    config = config_of(name)
    core = AnalogCore(W, config, input_range=(-1, 1) if signed else (0, 1))
    drives = core.input_drives(x)
    drives = core._slice(drives) if config.input_bitslicing else drives[None]
    for index, tile in enumerate(core._tiles):
        plan = core._fused_circuit(index)
        assert plan is not None
        currents = core._read(drives, tile)
        sums = drives[:, :, tile.start:tile.stop].sum(axis=2, keepdims=True) if core.mode is MappingMode.OFFSET else None
        expected = reference_tile_output(core, index, currents.copy(), sums)
        np.testing.assert_array_equal(core._convert_and_add(currents, sums, index, plan), expected)


def test_reference_kinds_are_covered():
    "The cases above reach every way the pass subtracts a reference: none (offset or none), one unit column, G− as a block, unit columns per column tile."
    kinds = set()
    for name in CASES:
        core = AnalogCore(np.random.default_rng(1).normal(size=(19, 70)), config_of(name))
        kinds.add((core._fused_circuit(0)["reference_kind"], core._fused_circuit(0)["subtract_offset"]))
    assert {(0, True), (0, False), (1, False), (2, False), (3, False)} <= kinds, kinds


@pytest.mark.parametrize("kind, bits", [("ramp", 6), ("sar", 9), ("pipeline", 8), ("cyclic", 5), ("sar", 12)])
@pytest.mark.parametrize("errors", [False, True], ids=["ideal", "errors"])
def test_fine_table_equals_the_bucket_table(kind, bits, errors):
    "Inputs on and one float32 step either side of every breakpoint, random inputs, both ends: the fine table's level (where it holds one) is `convert`'s."
    config = InferenceConfig(adc_bits=bits, adc_type=kind, gain_db=60.0, **(ERRORS[kind] if errors else {}),
                             **({} if kind == "ramp" else dict(group_size=4)))
    transfers = draw_transfers(config, 12, np.random.default_rng(bits))
    table = TransferTable(transfers, bits)
    unique = list({id(t): t for t in transfers}.values())
    shift, fine = table.fine_levels()
    points = float32_below(np.concatenate([np.clip(t.breakpoints, -1, 1) for t in unique]))
    x = np.concatenate([points, np.nextafter(points, np.float32(2)), np.nextafter(points, np.float32(-2)),
                        np.random.default_rng(3).uniform(-1, 1, 5000).astype(np.float32), np.float32([-1, 1])]).astype(np.float32)
    adc = np.arange(len(x)) % table.n_adcs
    fine_buckets = table.buckets << shift
    bucket = np.clip(((x + np.float32(1)) * np.float32(fine_buckets / 2)).astype(np.int32), 0, fine_buckets - 1)
    found = fine[adc * fine_buckets + bucket]
    expected = table.convert(x.reshape(1, 1, 1, -1).copy(), np.array([[[-1, 1, 1, 1]]], np.float32),
                             (adc * table.buckets).astype(np.uint32)[None])[0, 0, 0]
    held = ~np.isnan(found)
    np.testing.assert_array_equal(found[held], expected[held])
    assert np.isnan(fine[-1]) and len(fine) == table.n_adcs * fine_buckets + 1
    interior = ~np.isnan(fine[:-1])
    assert interior.mean() > (0.9 if table.n_adcs == 1 else 0.5), interior.mean()        # most conversions are one load
