"""Benchmark: AnalogCore on a 1152x256 matrix times 1024 vectors, as a ratio to plain NumPy matmul in the same run.

Cases (issue 2): (a) ideal; (b) 8-bit DAC + 8-bit CALIBRATED ADC (limits = 99.99th percentile of a profile made here);
(c) (b) + 1 % read noise (proportional), and (issue 15) with independent noise, on 4 row tiles, with 4 weight slices,
with input bit slicing; (d) (b) + 4 weight slices; (e) (b) + 8-bit input bit slicing with an ADC per input bit;
(f) (b) + a measured device's read noise (SONOS, issue 10), whose ratio to (c) is printed: a named model's σ(G) is
computed once at programming, so its reads cost what generic read noise costs; (g) (b) with SONOS devices 1 day after
programming and (h) (g) with global drift compensation, whose ratios to (b) show what drift costs at inference.
(b-ramp), (b-sar), (b-pipeline): (b) with circuit ADCs with component errors (issue 12: at most 1.5x (b)).
(i) ISAAC's settings (16-bit weights in 8 slices of 2 bits, 1-bit input slices, a 9-bit GRANULAR ADC per bit) on 10 row
tiles of 115-116 rows: a lossless periphery, read as one exact product (issue 27); the row tiles' paths are printed. (On
128-row tiles a signed input can drive a unit column to 256 levels, one more than the ADC's 255: those tiles are lossy.)
Issue 27 targets (ratio to NumPy): (a) <= 1.05, (b) <= 1.3, (c) <= 2.5, (d) <= 4.5, (e) <= 9.
Programming time (building the arrays) is reported separately from inference time. `--reference` reads every core on the
tile-by-tile, slice-by-slice reference path (`core._FAST_PATHS = False`): the same run before issue 27's fast paths.
`--single-thread` runs everything on one CPU with one BLAS thread and times CPU time (time.process_time): the fair
measure on a shared, noisy machine, where wall-clock ratios of two-thread runs swing with the load.
Usage: python benchmarks/bench_core.py [--repeats N] [--reference] [--single-thread]
"""
import argparse, os, sys, time
SINGLE_THREAD = "--single-thread" in sys.argv
if SINGLE_THREAD:        # before NumPy loads its BLAS: one thread on one CPU (numba, onnxruntime and TensorFlow see one CPU too)
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    if hasattr(os, "sched_setaffinity"): os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
CLOCK = time.process_time if SINGLE_THREAD else time.perf_counter
import numpy as np
import crosssim_nb.core as core_module
from crosssim_nb import AnalogCore, InferenceConfig

def best_time(fn, repeats):
    "Minimum wall time (CPU time with --single-thread) of `repeats` calls (the least noisy estimate on a shared machine)."
    times = []
    for _ in range(repeats):
        start = CLOCK(); fn(); times.append(CLOCK() - start)
    return min(times)

def paired_ratio(core_a, core_b, x_rows, pairs):
    "Median over `pairs` back-to-back calls of time(core_a) / time(core_b)."
    ratios = []
    for _ in range(pairs):
        start = CLOCK(); core_a.apply(x_rows); middle = CLOCK(); core_b.apply(x_rows); end = CLOCK()
        ratios.append((middle - start) / (end - middle))
    return float(np.median(ratios))

def calibrated_limits(matrix, config, x_rows, percentile=99.99):
    "Symmetric per-slice (per-input-bit) limits from a profile of the ADC inputs, ADCs off."
    profile_core = AnalogCore(matrix, config.replace(adc_range_option="MAX"))
    records = profile_core.adc_inputs(x_rows)
    values = np.concatenate([r["values"] for r in records], axis=3)          # (slices, k, batch, n_out)
    top = np.percentile(np.abs(values).reshape(values.shape[0], values.shape[1], -1), percentile, axis=2)
    return np.stack([-top, top], axis=-1)                                    # (slices, k, 2)

TARGETS = {"(a) ideal": 1.05, "(b) 8-bit DAC + 8-bit calibrated ADC": 1.3, "(c) (b) + 1% read noise": 2.5,
           "(d) (b) + 4 weight slices": 4.5, "(e) (b) + 8-bit input bit slicing, ADC per bit": 9}

def main(repeats=5, reference=False):
    core_module._FAST_PATHS = not reference
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(256, 1152)).astype(np.float32)
    x = rng.uniform(-1, 1, size=(1152, 1024)).astype(np.float32)
    x_rows = np.ascontiguousarray(x.T)
    base = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="CALIBRATED", nrows_max=1152)
    cases = {
        "(a) ideal": InferenceConfig.ideal(),
        "(b) 8-bit DAC + 8-bit calibrated ADC": base,
        "(c) (b) + 1% read noise": base.replace(noise_model="generic", alpha_noise=0.01),
        "(c-independent) (c), one sigma on every device": base.replace(noise_model="generic", alpha_noise=0.01, noise_dependence="independent"),
        "(c-tiles) (c) on 4 row tiles of 288 rows": base.replace(noise_model="generic", alpha_noise=0.01, nrows_max=288),
        "(c-slices) (c) + 4 weight slices": base.replace(noise_model="generic", alpha_noise=0.01, nslices=4),
        "(c-bits) (c) + input bit slicing, ADC per bit": base.replace(noise_model="generic", alpha_noise=0.01, input_bitslicing=True, adc_per_ibit=True),
        "(d) (b) + 4 weight slices": base.replace(nslices=4),
        "(e) (b) + 8-bit input bit slicing, ADC per bit": base.replace(input_bitslicing=True, adc_per_ibit=True),
        "(f) (b) + SONOS read noise": base.replace(rmin=35e3, vread=0.06, noise_model="SONOS"),
        "(g) (b) + SONOS drift, 1 day": base.replace(rmin=35e3, vread=0.06, error_model="SONOS", drift_model="SONOS", t_drift=1.0),
        "(h) (g) + global drift compensation": base.replace(rmin=35e3, vread=0.06, error_model="SONOS", drift_model="SONOS", t_drift=1.0,
                                                            drift_compensation="global"),
        "(b-ramp) (b) with ramp ADCs, 1% mismatch/offset": base.replace(adc_type="ramp", sigma_capacitor=0.01, sigma_comparator=0.01),
        "(b-sar) (b) with SAR ADCs (8 columns each), errors": base.replace(adc_type="sar", sigma_capacitor=0.01, sigma_comparator=0.01),
        "(b-pipeline) (b) with pipeline ADCs, errors": base.replace(adc_type="pipeline", sigma_c1=0.01, sigma_c2=0.01, sigma_comparator=0.01),
        "(i) ISAAC settings, 120-row tiles (exact periphery)": InferenceConfig.preset("ISAAC").replace(nrows_max=120),
    }
    numpy_time = best_time(lambda: matrix @ x, repeats)
    rows, times, cores = [], {}, {}
    for label, config in cases.items():
        limits = calibrated_limits(matrix, config, x_rows[:256]) if config.adc_range_option == "CALIBRATED" and config.adc_bits else None
        if limits is not None and not config.adc_per_ibit: limits = limits[:, 0]
        start = time.perf_counter(); core = AnalogCore(matrix, config, adc_limits=limits); program_time = time.perf_counter() - start
        cores[label] = core
        core.apply(x_rows)   # warm-up
        numpy_time = min(numpy_time, best_time(lambda: matrix @ x, repeats))
        times[label] = best_time(lambda: core.apply(x_rows), repeats)
        rows.append((label, program_time))
    print(f"AnalogCore benchmark: 1152x256 matrix x 1024 vectors, float32; NumPy matmul {numpy_time * 1e3:.2f} ms (best of {repeats})"
          + ("; REFERENCE path (fast paths off)" if reference else "") + ("; ONE THREAD, CPU time" if SINGLE_THREAD else ""))
    print(f"{'case':56s} {'x numpy':>8s} {'x (b)':>7s} {'program s':>10s} {'target':>7s}")
    for label, program_time in rows:
        target = f"<= {TARGETS[label]:g}" if label in TARGETS else ""
        print(f"{label:56s} {times[label] / numpy_time:8.2f} {times[label] / times['(b) 8-bit DAC + 8-bit calibrated ADC']:7.2f} "
              f"{program_time:10.3f} {target:>7s}")
    isaac = cores["(i) ISAAC settings, 120-row tiles (exact periphery)"]
    print("(i) row tiles:", ", ".join(f"{row.rows} {row.path}" + (f" ({row.reason})" if row.reason else "") for row in isaac.tile_paths().itertuples()))
    # the device-library ratios, timed alternately (each pair back to back) so that load changes on a shared machine cancel
    for label, numerator, denominator in (("named-model (SONOS) read noise / generic read noise", "(f) (b) + SONOS read noise", "(c) (b) + 1% read noise"),
                                          ("SONOS drift 1 day / undrifted (b)", "(g) (b) + SONOS drift, 1 day", "(b) 8-bit DAC + 8-bit calibrated ADC"),
                                          ("drift + global compensation / undrifted (b)", "(h) (g) + global drift compensation", "(b) 8-bit DAC + 8-bit calibrated ADC")):
        print(f"{label}: {paired_ratio(cores[numerator], cores[denominator], x_rows, 3 * repeats):.2f}x (median of {3 * repeats} alternating pairs)")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference", action="store_true", help="read on the slice-by-slice reference path (fast paths off)")
    parser.add_argument("--single-thread", action="store_true", help="one CPU, one BLAS thread, CPU time (for a noisy shared machine)")
    arguments = parser.parse_args()
    main(arguments.repeats, arguments.reference)
