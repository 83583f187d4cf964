"""Benchmark: nanoseconds per conversion of the circuit ADCs (ramp, SAR, pipeline, cyclic) on a sliced read.

Each case is one row tile's ADC periphery as `AnalogCore` builds it (128 rows x 128 columns unless the preset says
otherwise) digitising the column currents of a sliced read, shape (input slices, batch, weight slices, columns) —
`--batch` vectors, ~8 M conversions for ISAAC-SarADC. Timed: `CircuitADCGrid.digitize` (clip to the range, normalise by
Vref, find each input's level in its own ADC's fine table — one load; the few fine buckets a breakpoint meets compare with
the bucket table's breakpoints — and scale the level back), best of `--repeats`, divided by the number of conversions:
wall time, and CPU time of all threads (the work itself; on a shared machine the wall time also holds the waits for a
CPU). Target (issue 27): <= 2 ns per conversion. Beside it, the read path's compiled pass (`AnalogCore.tile_output`
through `_fused_circuit` and `_convert_and_add`): every conversion and the shift-and-add into the outputs, a unit column
converted once per array; conversions = input slices x batch x converted columns of the tile.

Cases: the ISAAC-SarADC and PRIME presets, and each circuit type at 8 bits with and without component errors
(1 % capacitor mismatch / comparator offset; SAR, pipeline and cyclic ADCs serve 8 columns each) on 4 weight slices x
8 one-bit input slices with an ADC per input bit.

Usage:  nice -n 10 .venv/bin/python benchmarks/bench_adc_circuits.py [--repeats 5] [--batch 512] [--cases sar-errors prime ...]
"""
import argparse, time
import numpy as np
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.crosssim_compat import preset_adc_limits

ERRORS = dict(ramp=dict(sigma_capacitor=0.01, sigma_comparator=0.01), sar=dict(sigma_capacitor=0.01, sigma_comparator=0.01),
              pipeline=dict(sigma_c1=0.01, sigma_c2=0.01, sigma_comparator=0.01), cyclic=dict(sigma_c1=0.01, sigma_c2=0.01, sigma_comparator=0.01))


def cases() -> dict:
    "label -> (configuration, ADC limits or None)."
    plain = InferenceConfig(weight_bits=8, nslices=4, dac_bits=8, input_bitslicing=True, adc_per_ibit=True, adc_bits=8,
                            adc_range_option="MAX", nrows_max=128)
    found = {"isaac-sar": (InferenceConfig.preset("ISAAC-SarADC"), None),
             "prime": (InferenceConfig.preset("PRIME"), np.array(preset_adc_limits("PRIME")))}
    for kind, errors in ERRORS.items():
        config = plain.replace(adc_type=kind, **({} if kind == "ramp" else dict(group_size=8)))
        found[f"{kind}-ideal"] = (config, None)
        found[f"{kind}-errors"] = (config.replace(**errors), None)
    return found


def time_case(config, limits, batch, repeats, rng):
    "Best wall seconds and best CPU seconds (all threads) of one tile's `digitize` over every part, and the number of conversions."
    core = AnalogCore(rng.normal(size=(128, 128)), config, adc_limits=limits, name="bench")
    grid = core.tile_adc_grids[0]
    scale = np.asarray(grid.vref, dtype=np.float32)
    shape = (grid.low.shape[0], batch, core.n_weight_slices, 128)
    currents = {part: (rng.uniform(-1.1, 1.1, shape).astype(np.float32) * scale) for part in grid.adc_index}
    work = {part: np.empty_like(value) for part, value in currents.items()}
    best, best_cpu = np.inf, np.inf
    for _ in range(repeats + 1):                       # (the first is a warm-up)
        for part in currents: np.copyto(work[part], currents[part])
        start, start_cpu = time.perf_counter(), time.process_time()
        for part in currents: grid.digitize(work[part], part)
        best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, sum(value.size for value in currents.values())


def time_fused(config, limits, batch, repeats, rng):
    "Best wall and CPU seconds of one tile's compiled convert-and-add pass (`tile_output`) and its conversions; None where the pass does not apply."
    core = AnalogCore(rng.normal(size=(128, 128)), config, adc_limits=limits, name="bench")
    plan = core._fused_circuit(0)
    if plan is None: return None
    grid, k = core.tile_adc_grids[0], core.n_input_slices
    columns = core._tiles[0].matrix.shape[1]
    currents = rng.uniform(-1.1, 1.1, (k, batch, columns)).astype(np.float32) * np.float32(np.max(grid.vref))
    drive_sums = rng.uniform(0, 64, (k, batch, 1)).astype(np.float32)
    best, best_cpu = np.inf, np.inf
    for _ in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        core.tile_output(0, currents, drive_sums)
        best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, k * batch * len(plan["fine_rows"])     # (every converted column of the tile, references included)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (best reported)")
    parser.add_argument("--batch", type=int, default=512, help="vectors per read")
    parser.add_argument("--cases", nargs="+", default=None, help=f"which cases (default: all of {', '.join(cases())})")
    args = parser.parse_args()
    found = cases()
    unknown = sorted(set(args.cases or ()) - set(found))
    if unknown: raise SystemExit(f"--cases: {', '.join(unknown)} not known; allowed: {', '.join(found)}")
    rng = np.random.default_rng(0)
    print(f"{'case':16s} {'adc':>24s} {'conversions':>12s} {'ms':>9s} {'ns/conversion':>14s} {'CPU ns/conversion':>18s}"
          f"   {'read pass: conversions':>22s} {'ns/conv':>8s} {'CPU ns/conv':>12s}")
    for label in args.cases or found:
        config, limits = found[label]
        seconds, cpu_seconds, conversions = time_case(config, limits, args.batch, args.repeats, rng)
        adc = f"{config.adc_bits}-bit {config.adc_type}" + ("" if config.adc_type == "ramp" else f"/{config.group_size} cols")
        fused = time_fused(config, limits, args.batch, args.repeats, rng)
        read_pass = "" if fused is None else f"   {fused[2]:22d} {fused[0] / fused[2] * 1e9:8.2f} {fused[1] / fused[2] * 1e9:12.2f}"
        print(f"{label:16s} {adc:>24s} {conversions:12d} {seconds * 1e3:9.2f} {seconds / conversions * 1e9:14.2f} {cpu_seconds / conversions * 1e9:18.2f}"
              + read_pass, flush=True)


if __name__ == "__main__":
    main()
