"""Benchmark: peak memory (RSS) of simulating every keras.applications model, against Keras alone.

For each model (enumerated from the installed `keras.applications` at run time), three fresh processes run one after
another, so their peaks do not mix: Keras alone (build the model with random weights at its default input size and
`predict` one image), the simulator with `InferenceConfig.ideal()`, and the simulator with 8-bit weights/DAC/ADC
(MAX range, DAC ranges profiled on 2 images), each predicting one image (batch 1). The peak RSS of each process is
read from `resource.getrusage` (ru_maxrss) at its end. Targets (issue 15): simulator <= 2x Keras and
<= Keras + 12 bytes per weight.

Usage:  .venv/bin/python benchmarks/memory_keras_applications.py [--models ResNet50,MobileNet] [--smallest 10]
                                                                 [--out benchmarks/results/memory_applications.json]
Models are run smallest first (by weight count); a process killed for memory is recorded as such.
"""
import argparse, json, os, subprocess, sys, time

CHILD = r"""
import os, sys, json, resource
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, keras
name, mode = sys.argv[1], sys.argv[2]
model = getattr(keras.applications, name)(weights=None)
if None in model.input_shape[1:]:          # size-agnostic models (MobileNetV3): their default size, 224 px
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
shape = tuple(model.input_shape[1:])
x = np.random.default_rng(0).uniform(0, 255, size=(2,) + shape).astype(np.float32)
result = dict(model=name, mode=mode, weights=int(model.count_params()), input_shape=list(shape))
if mode == "keras":
    model.predict(x[:1], batch_size=1, verbose=0)
else:
    from crosssim_nb.config import InferenceConfig
    from crosssim_nb.network import AnalogNetwork
    config = (InferenceConfig.ideal() if mode == "ideal" else
              InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX"))
    net = AnalogNetwork.from_keras(model, config, calibration_data=None if mode == "ideal" else x, calibration_samples=2,
                                   batch_size=1)
    net.predict(x[:1], batch_size=1)
result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print("RESULT " + json.dumps(result))
"""


def application_names():
    "Every model constructor the installed keras.applications exports (found at run time, no hand-kept list)."
    import inspect, keras
    return sorted(n for n in dir(keras.applications) if not n.startswith("_") and inspect.isfunction(getattr(keras.applications, n)))


def weight_counts(names):
    "Weights per model, each counted in a child process (building many models in one process would pile up memory)."
    code = ("import os,sys,json; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'; import keras\n"
            "print(json.dumps({n: int(getattr(keras.applications, n)(weights=None).count_params()) for n in sys.argv[1:]}))")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_child(name, mode, timeout):
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, name, mode], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(model=name, mode=mode, error=f"timed out after {timeout} s")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "): return {**json.loads(line[7:]), "seconds": time.perf_counter() - start}
    reason = "killed (out of memory?)" if done.returncode in (-9, 137) else (done.stderr.strip().splitlines() or ["?"])[-1]
    return dict(model=name, mode=mode, error=f"exit {done.returncode}: {reason}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated model names (default: all of keras.applications)")
    parser.add_argument("--smallest", type=int, default=0, help="only the N models with the fewest weights")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    parser.add_argument("--out", default="benchmarks/results/memory_applications.json")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else application_names()
    counts = weight_counts(names)
    names = sorted(names, key=counts.get)
    if args.smallest: names = names[:args.smallest]
    rows = []
    print(f"{'model':18s} {'weights':>11s} {'keras GiB':>9s} {'ideal GiB':>9s} {'8-bit GiB':>9s}  ratio ideal/8-bit  bytes/weight over Keras  target")
    for name in names:
        results = {mode: run_child(name, mode, args.timeout) for mode in ("keras", "ideal", "8bit")}
        keras_gb = results["keras"].get("peak_rss_gb")
        row = dict(model=name, weights=counts[name], **{f"{m}_peak_rss_gb": r.get("peak_rss_gb") for m, r in results.items()},
                   errors={m: r["error"] for m, r in results.items() if "error" in r})
        cells, ok = [], not row["errors"]
        for mode in ("ideal", "8bit"):
            gb = results[mode].get("peak_rss_gb")
            if gb is None or keras_gb is None: cells.append("   -   "); ok = False; continue
            extra = (gb - keras_gb) * 2**30 / counts[name]
            row[f"{mode}_ratio"], row[f"{mode}_bytes_per_weight_over_keras"] = gb / keras_gb, extra
            ok = ok and gb <= 2 * keras_gb and extra <= 12
            cells.append(f"{gb / keras_gb:4.2f}x/{extra:6.1f}B")
        row["meets_target"] = ok
        fmt = lambda v: f"{v:9.2f}" if v is not None else "     fail"
        print(f"{name:18s} {counts[name]:11,d} {fmt(keras_gb)} {fmt(row['ideal_peak_rss_gb'])} {fmt(row['8bit_peak_rss_gb'])}  "
              f"{'  '.join(cells)}  {'ok' if ok else 'MISSED'} {row['errors'] or ''}", flush=True)
        rows.append(row)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f: json.dump(rows, f, indent=2)
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
