"""Benchmark: simulated analog network vs plain Keras predict, in the same process.

Cases (issue 3):
  - keras.applications ResNet50, random weights, 224x224, batch 32
  - a CIFAR-size ResNet-20-style network (32x32x3, 3 stages x 3 basic blocks, 16/32/64 filters)
Each is timed for InferenceConfig.ideal() and for 8-bit weights / 8-bit DAC / 8-bit ADC (MAX range, DAC ranges
profiled on a calibration sample), as seconds per image and as a ratio to Keras `predict` on the same inputs.
Building the network (import, BN folding, DAC-range profiling, programming the arrays) is timed separately.

Timings interleave Keras and the simulator `--repeats` times. The ratio quoted is the median over repeats of
(simulator time / Keras time) measured back to back, which cancels the slow swings of a shared host; the ratio of
the best times is printed too. Targets: ideal <= 1.5x Keras, 8-bit <= 2.5x Keras.

Read noise (issue 15): the zoo's fashion_resnet and fashion_mobilenet with 8-bit weights/DAC and an 8-bit CALIBRATED
ADC, with generic read noise (alpha 0.02) vs the same run without noise (target <= 2x); ResNet50 8-bit + 1 % read
noise vs Keras (target <= 2.5x), proportional (the default: sigma = 1 % of each device's conductance, so the noise
variance is a second product as large as the layer's own) and independent (one sigma on every device: the variance is
a window sum of the squared inputs, and the cost is the draws).

Bit-sliced architectures (issue 27, `--sliced-only`, pick cases with `--cases`): the zoo's fashion_resnet with plain 8-bit
weights/DAC/ADC (MAX; target <= 1.5x Keras), the ISAAC preset (<= 10x), 4 weight slices x 8 one-bit input slices with a
6-bit CALIBRATED ADC per input bit (<= 12x), ISAAC-SarADC (<= 40x) and PRIME (CALIBRATED, <= 8x); keras.applications
ResNet50 (random weights) at 224 px with 4 weight slices x 8 input bits and a CALIBRATED 8-bit ADC per input bit (<= 20x).
Each case simulates a small image count (`--sliced-images`, `--resnet50-images`) so a slow configuration stays bounded;
Keras predicts the same images (fashion_resnet: repeated to 512, batch 256, so its per-call overhead does not flatter the
ratio). The ratio printed is of the best (min) per-image times over `--repeats` interleaved runs, the median of
back-to-back ratios beside it. `--profile` adds a CPU-time profile of one simulated run per case (in one thread, so it
holds on a loaded machine): the shares of products, ADC conversions, shift-and-add / recombination, DAC and input
slicing, and the top functions.

GPU (issue 15 section 4, `--gpu`): ResNet50 224 px and ResNet-20 with `use_gpu=True` (CuPy), ideal / 8-bit / 8-bit + 1 %
read noise, batch `--gpu-batch`; Keras predicts on its own backend's device (on a machine without TensorFlow, run with
KERAS_BACKEND=jax). The project's goal is <= 2 ms/image for ResNet50 on an H200 (CrossSim reports 23 ms/image on an A100).

Usage:  nice -n 10 .venv/bin/python benchmarks/bench_network.py [--quick] [--repeats 5] [--noise-only | --zoo-only | --gpu | --sliced-only]
        [--cases isaac prime ...] [--profile] [--noise-images 1000] [--out benchmarks/results/network.json]
"""
import argparse, json, os, platform, resource, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import crosssim_nb  # noqa: F401   first: it keeps TensorFlow's start-up lines off the terminal
import keras

from crosssim_nb.config import InferenceConfig
from crosssim_nb.network import AnalogNetwork
from crosssim_nb.adc_health import ADCHealthWarning
import warnings
# random-weight ResNet50 with MAX-range ADCs is a speed case: most conversions land on code zero, which the health
# check rightly flags; the warning says nothing about speed, so it is silenced here
warnings.filterwarnings("ignore", category=ADCHealthWarning)


def resnet20(input_shape=(32, 32, 3), classes=10, seed=0):
    "ResNet-20 (v1) for CIFAR: conv + 3 stages of 3 basic blocks (16, 32, 64 filters), BN after every conv."
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    def conv_bn(x, filters, strides=1, relu=True):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation("relu")(x) if relu else x
    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, filters, strides)
            y = conv_bn(y, filters, relu=False)
            if strides != 1 or x.shape[-1] != filters:
                x = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
                x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="resnet20")


def randomize_batchnorm(model, seed=0):
    "Non-trivial BN statistics (random-init BN is the identity, which would flatter nothing but is unrealistic)."
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in layer.weights:
                kind = variable.path.split("/")[-1]
                shape = variable.shape
                value = {"gamma": rng.uniform(0.5, 1.5, shape), "beta": rng.normal(0, 0.1, shape),
                         "moving_mean": rng.normal(0, 0.1, shape), "moving_variance": rng.uniform(0.5, 1.5, shape)}[kind]
                variable.assign(value.astype(np.float32))
    return model


def interleaved_times(functions, repeats):
    "Interleave the functions `repeats` times; wall times, shape (repeats, functions)."
    times = np.empty((repeats, len(functions)))
    for r in range(repeats):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            function()
            times[r, i] = time.perf_counter() - start
    return times


def bench_case(name, model, x, calibration, batch_size, repeats, noise_only=False, use_gpu=False):
    eight_bit = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=1152)
    configs = {"ideal": InferenceConfig.ideal(), "8bit": eight_bit,
               "8bit+noise": eight_bit.replace(noise_model="generic", alpha_noise=0.01),       # proportional: σ = 1 % of G
               "8bit+noise-independent": eight_bit.replace(noise_model="generic", alpha_noise=0.01, noise_dependence="independent")}
    if noise_only: configs = {label: configs[label] for label in ("8bit+noise", "8bit+noise-independent")}
    if use_gpu: configs = {f"{label}-gpu": config.replace(use_gpu=True) for label, config in configs.items() if label != "8bit+noise-independent"}
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)          # trace / warm up
    results = []
    for label, config in configs.items():
        start = time.perf_counter()
        net = AnalogNetwork.from_keras(model, config, calibration_data=calibration if label != "ideal" else None)
        build = time.perf_counter() - start
        start = time.perf_counter()
        net.program(1)
        program = time.perf_counter() - start
        net.predict(x[:batch_size], batch_size=batch_size)                    # warm up (allocations, BLAS threads)
        times = interleaved_times([lambda: model.predict(x, batch_size=batch_size, verbose=0),
                                   lambda: net.predict(x, batch_size=batch_size)], repeats)
        keras_time, sim_time = times.min(axis=0)
        median_ratio = float(np.median(times[:, 1] / times[:, 0]))
        reference = model.predict(x, batch_size=batch_size, verbose=0)
        output = net.predict(x, batch_size=batch_size)
        error = float(np.abs(output - reference).max() / np.abs(reference).max())
        row = dict(case=name, config=label, use_gpu=config.use_gpu, images=len(x), batch_size=batch_size,
                   keras_s_per_image=keras_time / len(x), sim_s_per_image=sim_time / len(x), ratio=median_ratio,
                   ratio_of_best_times=sim_time / keras_time,
                   build_s=build, program_s=program, max_relative_error=error)
        print(f"{name:10s} {label:22s} keras {row['keras_s_per_image'] * 1e3:8.2f} ms/img   sim {row['sim_s_per_image'] * 1e3:8.2f} "
              f"ms/img   ratio {row['ratio']:5.2f}x (best times {row['ratio_of_best_times']:4.2f}x)   build {build:6.1f} s  program {program:5.2f} s  rel.err {error:.1e}", flush=True)
        results.append(row)
    return results


def bench_noise_zoo(name, repeats, images=1000, batch_size=256):
    "A zoo model, 8-bit calibrated ADC: generic read noise (alpha 0.02) vs the same run without noise, in one process."
    from crosssim_nb import zoo
    from crosssim_nb.calibration import calibrate_adc
    model = keras.models.load_model(zoo.model_path(name))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(images,) + tuple(model.input_shape[1:])).astype(np.float32)
    calibration = rng.uniform(0, 1, size=(256,) + tuple(model.input_shape[1:])).astype(np.float32)
    base = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
    profiled = AnalogNetwork.from_keras(model, base, calibration_data=calibration, input_nonnegative=True)
    limits = calibrate_adc(profiled, calibration, method="percentile").adc_limits
    clean_config = base.replace(adc_range_option="CALIBRATED")
    clean = AnalogNetwork.from_keras(model, clean_config, input_ranges=profiled.input_ranges, adc_limits=limits,
                                     input_nonnegative=True)
    noisy = AnalogNetwork.from_keras(model, clean_config.replace(noise_model="generic", alpha_noise=0.02),
                                     input_ranges=profiled.input_ranges, adc_limits=limits, input_nonnegative=True)
    for f in (lambda: model.predict(x[:batch_size], batch_size=batch_size, verbose=0), lambda: clean.predict(x[:batch_size], batch_size),
              lambda: noisy.predict(x[:batch_size], batch_size)): f()
    times = interleaved_times([lambda: model.predict(x, batch_size=batch_size, verbose=0), lambda: clean.predict(x, batch_size),
                               lambda: noisy.predict(x, batch_size)], repeats)
    ratio = float(np.median(times[:, 2] / times[:, 1]))
    row = dict(case=name, config="8bit-calibrated+read-noise-0.02", images=images, batch_size=batch_size,
               keras_s_per_image=times[:, 0].min() / images, clean_s_per_image=times[:, 1].min() / images,
               sim_s_per_image=times[:, 2].min() / images, ratio_to_noiseless=ratio,
               ratio_to_keras=float(np.median(times[:, 2] / times[:, 0])), target_ratio_to_noiseless=2.0)
    print(f"{name:17s} read noise: keras {row['keras_s_per_image'] * 1e3:6.3f} ms/img  no noise {row['clean_s_per_image'] * 1e3:6.3f}  "
          f"noise {row['sim_s_per_image'] * 1e3:6.3f}  noisy/noiseless {ratio:4.2f}x (target <= 2)  noisy/keras {row['ratio_to_keras']:4.2f}x",
          flush=True)
    return [row]


def resnet50_case(images, quick, rng):
    "keras.applications ResNet50 (random weights, 224 px or 112 px with `quick`), `images` inputs and 32 calibration images."
    size = 112 if quick else 224
    model = randomize_batchnorm(keras.applications.ResNet50(weights=None, input_shape=(size, size, 3)))
    return model, rng.normal(size=(images, size, size, 3)).astype(np.float32), rng.normal(size=(32, size, size, 3)).astype(np.float32)


def resnet20_case(images, rng):
    "The CIFAR ResNet-20, `images` inputs and 256 calibration images."
    return randomize_batchnorm(resnet20()), rng.normal(size=(images, 32, 32, 3)).astype(np.float32), rng.normal(size=(256, 32, 32, 3)).astype(np.float32)


SLICED_TARGETS = {"8bit": 1.5, "isaac": 10, "slices4-ibits8-adc6": 12, "isaac-sar": 40, "prime": 8, "resnet50-slices4-ibits8": 20}

def sliced_configs():
    "Issue 27's cases: label -> (model, configuration, whether its ADC ranges are CALIBRATED from a profile)."
    sliced = InferenceConfig(weight_bits=8, nslices=4, dac_bits=8, input_bitslicing=True, adc_per_ibit=True,
                             adc_range_option="CALIBRATED")
    return {"8bit": ("fashion_resnet", InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX"), False),
            "isaac": ("fashion_resnet", InferenceConfig.preset("ISAAC"), False),
            "slices4-ibits8-adc6": ("fashion_resnet", sliced.replace(adc_bits=6), True),
            "isaac-sar": ("fashion_resnet", InferenceConfig.preset("ISAAC-SarADC"), False),
            "prime": ("fashion_resnet", InferenceConfig.preset("PRIME"), True),
            "resnet50-slices4-ibits8": ("ResNet50", sliced.replace(adc_bits=8), True)}


def sliced_network(model, config, calibrated, calibration, input_nonnegative):
    "The AnalogNetwork of one sliced case; CALIBRATED ADC ranges from a percentile calibration on `calibration` (ADCs off)."
    from crosssim_nb.calibration import calibrate_adc
    if not calibrated: return AnalogNetwork.from_keras(model, config, calibration_data=calibration, input_nonnegative=input_nonnegative)
    profiled = AnalogNetwork.from_keras(model, config.replace(adc_range_option="MAX"), calibration_data=calibration,
                                        input_nonnegative=input_nonnegative)
    limits = calibrate_adc(profiled, calibration, method="percentile").adc_limits
    return AnalogNetwork.from_keras(model, config, input_ranges=profiled.input_ranges, adc_limits=limits, input_nonnegative=input_nonnegative)


PROFILE_GROUPS = {   # fragments of 'file:function' -> what the work is (the first group that matches wins)
    "ADC conversion": ("adc_circuits.py:convert", "convert_and_add", "digitize", "lookup", "_fused_levels"),
    "products (matmul / integer GEMM / library convolution)": ("_read", "_integer_product", "matmul", "onnxruntime", "FastPathExecute",
                                                              "_library_convolution"),
    "shift-and-add / recombination": ("tile_output", "_tile_parts", "_reference_columns", "tensordot", "reduce", "_finish"),
    "DAC and input slicing": ("quantize", "_slice", "slice_inputs", "core.py:dac", "digits", "input_drives"),
}

def profile_run(net, x, batch_size, top=10):
    """CPU-time profile of one simulated run, run in one thread named as the project's workers (so a network's chunks and
    the compiled kernels all run in it, one after another): each function's own time is the process's CPU time while it
    runs — its own work, and that of the library threads (BLAS, onnxruntime, TensorFlow) it waits on — whatever else loads
    the machine. The top functions by own time and the share of each kind of work (`PROFILE_GROUPS`)."""
    import cProfile, pstats, threading
    from crosssim_nb import convolution
    profiler = cProfile.Profile(time.process_time)
    def run():
        profiler.enable(); net.predict(x, batch_size=batch_size); profiler.disable()
    saved, convolution.THREADS = convolution.THREADS, 1
    try:
        worker = threading.Thread(target=run, name="crosssim-worker-profile"); worker.start(); worker.join()
    finally: convolution.THREADS = saved
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values())
    rows = sorted(((entry[2], f"{os.path.basename(file)}:{name}", f"{os.path.basename(file)}:{line}({name})")
                   for (file, line, name), entry in stats.items()), reverse=True)
    groups = {}
    for seconds, name, _ in rows:
        group = next((g for g, fragments in PROFILE_GROUPS.items() if any(f in name for f in fragments)), "other")
        groups[group] = groups.get(group, 0.0) + seconds
    return dict(cpu_s=total, groups={g: v / total for g, v in sorted(groups.items(), key=lambda item: -item[1])},
                top=[(seconds, seconds / total, where) for seconds, _, where in rows[:top]])


def bench_sliced(labels, repeats, images, resnet50_images, quick, profile):
    "Issue 27's bit-sliced cases: simulator vs Keras predict on the same images, min of `repeats` interleaved runs."
    from crosssim_nb import zoo
    rng = np.random.default_rng(27)
    configs, models, results = sliced_configs(), {}, []
    for label in labels:
        model_name, config, calibrated = configs[label]
        if model_name not in models:
            if model_name == "ResNet50":
                model, x, calibration = resnet50_case(resnet50_images, quick, rng)
                models[model_name] = (model, x, calibration[:8], len(x))
            else:
                model = keras.models.load_model(zoo.model_path(model_name))
                shape = tuple(model.input_shape[1:])
                models[model_name] = (model, rng.uniform(0, 1, (images,) + shape).astype(np.float32),
                                      rng.uniform(0, 1, (256,) + shape).astype(np.float32), min(images, 256))
        model, x, calibration, batch_size = models[model_name]
        # Keras on at least 512 images (its per-call overhead would dominate a small set and flatter the ratio): x repeated
        keras_x = x if model_name == "ResNet50" else np.concatenate([x] * -(-512 // len(x)))
        keras_batch = batch_size if model_name == "ResNet50" else 256
        start = time.perf_counter()
        net = sliced_network(model, config, calibrated, calibration, input_nonnegative=model_name != "ResNet50")
        net.program(1)
        build = time.perf_counter() - start
        warm = x[:min(len(x), 8)]
        model.predict(keras_x[:keras_batch], batch_size=keras_batch, verbose=0); net.predict(warm, batch_size=batch_size)   # warm up
        outputs = {}
        times = interleaved_times([lambda: outputs.update(keras=model.predict(keras_x, batch_size=keras_batch, verbose=0)),
                                   lambda: outputs.update(sim=net.predict(x, batch_size=batch_size))], repeats)
        per_image = times / np.array([len(keras_x), len(x)])
        keras_time, sim_time = per_image.min(axis=0)
        reference = outputs["keras"][:len(x)]
        error = float(np.abs(outputs["sim"] - reference).max() / np.abs(reference).max())
        row = dict(case=model_name, config=label, images=len(x), keras_images=len(keras_x), batch_size=batch_size,
                   keras_s_per_image=keras_time, sim_s_per_image=sim_time, ratio=sim_time / keras_time,
                   median_ratio=float(np.median(per_image[:, 1] / per_image[:, 0])), target=SLICED_TARGETS[label], build_s=build,
                   max_relative_error=error)
        print(f"{model_name:14s} {label:24s} keras {row['keras_s_per_image'] * 1e3:8.3f} ms/img   sim {row['sim_s_per_image'] * 1e3:9.3f} ms/img"
              f"   ratio {row['ratio']:7.2f}x (median of pairs {row['median_ratio']:7.2f}x; target <= {row['target']}x)"
              f"   build {build:6.1f} s   rel.err {error:.1e}", flush=True)
        if profile:
            row["profile"] = found = profile_run(net, x, batch_size)
            print(f"      CPU time of one run, chunks in one thread: {found['cpu_s'] / len(x) * 1e3:.1f} ms/img; "
                  + ", ".join(f"{group} {share:.0%}" for group, share in found["groups"].items()))
            for seconds, share, where in found["top"]: print(f"      {seconds:8.3f} s {share:6.1%}  {where}")
        results.append(row)
    return results


def bench_gpu(batch_size, repeats, quick, rng):
    "ResNet50 (`batch_size` images) and ResNet-20 (8× as many) with `use_gpu=True`: ideal, 8-bit, 8-bit + 1 % read noise."
    from crosssim_nb.backend import gpu_status
    usable, reason = gpu_status()
    if not usable: raise SystemExit(f"--gpu: no usable CUDA GPU ({reason})")
    results = bench_case("ResNet50", *resnet50_case(batch_size, quick, rng), batch_size=batch_size, repeats=repeats, use_gpu=True)
    return results + bench_case("ResNet20", *resnet20_case(8 * batch_size, rng), batch_size=8 * batch_size, repeats=repeats, use_gpu=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs (ResNet50 at 112 px, fewer CIFAR images)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median ratio reported)")
    parser.add_argument("--out", default="benchmarks/results/network.json", help="JSON file for the results")
    parser.add_argument("--noise-only", action="store_true", help="only the read-noise cases")
    parser.add_argument("--zoo-only", action="store_true", help="only the zoo read-noise cases (fashion_resnet, fashion_mobilenet)")
    parser.add_argument("--noise-images", type=int, default=1000, help="images per timed run of the zoo read-noise cases")
    parser.add_argument("--gpu", action="store_true", help="only the GPU cases (use_gpu=True; needs CuPy and a CUDA GPU)")
    parser.add_argument("--sliced-only", action="store_true", help="only the bit-sliced cases of issue 27 (see --cases)")
    parser.add_argument("--cases", nargs="+", default=list(SLICED_TARGETS), choices=list(SLICED_TARGETS), help="which bit-sliced cases to run")
    parser.add_argument("--sliced-images", type=int, default=64, help="fashion_resnet images per timed run of the bit-sliced cases")
    parser.add_argument("--resnet50-images", type=int, default=4, help="ResNet50 images per timed run of the bit-sliced case")
    parser.add_argument("--profile", action="store_true", help="CPU-time profile of one simulated run of every bit-sliced case (shares of the work, top functions)")
    parser.add_argument("--gpu-batch", type=int, default=128, help="batch size of the GPU cases (ResNet50: that many images per run)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = []
    if args.gpu: results += bench_gpu(args.gpu_batch, args.repeats, args.quick, rng)
    elif args.sliced_only: pass
    else:
        for name in ("fashion_resnet", "fashion_mobilenet"): results += bench_noise_zoo(name, args.repeats, images=args.noise_images)
    if not args.gpu and not args.noise_only and not args.zoo_only:
        results += bench_sliced(args.cases, args.repeats, args.sliced_images, args.resnet50_images, args.quick, args.profile)
    if not (args.gpu or args.zoo_only or args.sliced_only):
        results += bench_case("ResNet50", *resnet50_case(32, args.quick, rng), batch_size=32, repeats=args.repeats, noise_only=args.noise_only)
    if not (args.gpu or args.noise_only or args.zoo_only or args.sliced_only):
        results += bench_case("ResNet20", *resnet20_case(256 if args.quick else 1024, rng), batch_size=128, repeats=args.repeats)

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of the whole process (Keras models included): {peak:.2f} GB")
    meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(), numpy=np.__version__,
                keras=keras.__version__, keras_backend=keras.backend.backend(), gpu=args.gpu, quick=args.quick, repeats=args.repeats, peak_rss_gb=peak,
                load_average=os.getloadavg())
    with open(args.out, "w") as f: json.dump(dict(meta=meta, results=results), f, indent=2)
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
