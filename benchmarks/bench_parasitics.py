"""Benchmark: arrays with parasitic wire resistance vs the same arrays without, in the same process (issue 11).

Cases:
  (a) one 1152×256 BALANCED 8-bit array pair (8-bit DAC, 8-bit ADC on MAX ranges), rp_row = rp_col = 1 ohm, rmin = 1 kohm:
      time to compute T (per array; a BALANCED core has two), and reading 1024 vectors with parasitics vs without
      (targets: T <= 30 s, read ratio <= 3x);
  (b) one 256×256 array: time to compute T (target <= 2 s);
  (c) fashion_resnet (zoo), 1000 test images, nrows_max = 256, 8-bit weights/DAC, calibrated 8-bit ADCs, parasitics on
      vs off: total wall time of `run_inference` (DAC and ADC calibration, programming with every array's T, inference),
      ratio (target <= 5x), and both accuracies.
Reading ratios are the median over --repeats of back-to-back timings (the host is shared); T times are given as wall
and CPU seconds (T is computed on one thread, so on a busy host the CPU seconds are the honest measure).

Usage:  nice -n 10 .venv/bin/python benchmarks/bench_parasitics.py [--quick] [--repeats 5] [--skip-network]
"""
import argparse, os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np

from crosssim_nb.config import InferenceConfig
from crosssim_nb.core import AnalogCore
from crosssim_nb.parasitics import Circuit, transfer_matrices


def time_transfer(rows, cols, seed=0):
    "Seconds to compute T of one rows×cols array of 8-bit BALANCED conductances at r = 1 ohm / 1 kohm."
    rng = np.random.default_rng(seed)
    G = np.rint(np.abs(rng.normal(0, 0.4, (rows, cols))).clip(0, 1) * 127) / 127
    start, cpu = time.perf_counter(), time.process_time()
    transfer_matrices(Circuit(r_row=1e-3, r_col=1e-3), G)
    return f"{time.perf_counter() - start:.2f} s wall, {time.process_time() - cpu:.2f} s CPU"


def array_case(rows, cols, vectors, repeats):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(cols, rows))
    x = rng.uniform(-1, 1, (vectors, rows)).astype(np.float32)
    base = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=rows, rmin=1e3)
    start = time.perf_counter(); plain = AnalogCore(W, base); program_plain = time.perf_counter() - start
    start = time.perf_counter(); wired = AnalogCore(W, base.replace(rp_row=1.0, rp_col=1.0)); program_wired = time.perf_counter() - start
    ratios, best_plain, best_wired = [], np.inf, np.inf
    for _ in range(repeats):
        start = time.perf_counter(); plain.apply(x); t_plain = time.perf_counter() - start
        start = time.perf_counter(); y = wired.apply(x); t_wired = time.perf_counter() - start
        ratios.append(t_wired / t_plain); best_plain, best_wired = min(best_plain, t_plain), min(best_wired, t_wired)
    ideal = plain.apply(x)
    print(f"(a) {rows}x{cols} BALANCED core (2 arrays): programming {program_plain:.2f} s without, {program_wired:.2f} s with "
          f"parasitics (T of both arrays); per array {(program_wired - program_plain) / 2:.2f} s")
    print(f"    reading {vectors} vectors: {best_plain * 1e3:.1f} ms without, {best_wired * 1e3:.1f} ms with; "
          f"median ratio {np.median(ratios):.2f}x (target <= 3x)")
    print(f"    output change caused by the wires: mean |dy| / max|y| = {np.abs(y - ideal).mean() / np.abs(ideal).max():.3f}")


def network_case(ntest):
    from crosssim_nb import zoo
    from crosssim_nb.inference import run_inference
    dataset = zoo.info("fashion_resnet")["dataset"]
    base = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, nrows_max=256)
    results = {}
    for label, config in (("without", base), ("with", base.replace(rp_row=1.0, rp_col=1.0))):
        start = time.perf_counter()
        result = run_inference("fashion_resnet", dataset, config, ntest=ntest, progress=False, adc_calibration="optimal")
        results[label] = (time.perf_counter() - start, result.mean[0], result.float_accuracy[0])
        print(f"(c) fashion_resnet {label} parasitics: {results[label][0]:.1f} s total, accuracy {results[label][1]:.4f} "
              f"(float {results[label][2]:.4f})", flush=True)
    print(f"    total-time ratio {results['with'][0] / results['without'][0]:.2f}x (target <= 5x); "
          f"accuracy change {results['with'][1] - results['without'][1]:+.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller cases (a smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-network", action="store_true")
    args = parser.parse_args()
    rows, vectors, ntest = (288, 256, 200) if args.quick else (1152, 1024, 1000)
    print(f"(b) T of one 256x256 array: {time_transfer(256, 256)} (target <= 2 s)")
    print(f"    T of one {rows}x256 array: {time_transfer(rows, 256)} (target <= 30 s at 1152 rows)", flush=True)
    array_case(rows, 256, vectors, args.repeats)
    if not args.skip_network: network_case(ntest)
