"""Benchmark: an ONNX ResNet imported with `AnalogNetwork.from_onnx` vs onnxruntime on the same file (issue 25).

Cases:
  - resnet20: a CIFAR-size ResNet-20 (v1: conv + 3 stages x 3 basic blocks, 16/32/64 filters, 1x1 projections) at
    32x32x3, channels first, written with onnx.helper the way PyTorch's exporters write it after folding BatchNorm
    (Conv with bias, Relu, Add, GlobalAveragePool, Flatten, Gemm); random He-initialised weights (seed 0), dynamic batch.
  - fashion_resnet_torch: the zoo's PyTorch-born ResNet (28x28x1), when its file is there.
Each is timed, in one process, for onnxruntime (CPU execution provider, its default threads: one intra-op thread per
physical core; `--ort-threads 1` for one), our InferenceConfig.ideal() network and our 8-bit network (8-bit weights, DAC and ADC, CALIBRATED
ADC ranges chosen by `calibrate_adc(method="optimal")` on a calibration sample; DAC ranges profiled on the same
sample). numpy's BLAS uses its default threads too. The runs interleave `--repeats` times; each engine's time is the
minimum over repeats (the least disturbed run on a shared host) and the ratios are of those minima.
Targets: ideal <= 1.5x onnxruntime, 8-bit <= 2.5x onnxruntime.

Peak memory: each engine runs in its own child process (this script with `--child ENGINE`), so one engine's
allocations cannot hide another's and onnxruntime's allocator (invisible to tracemalloc) is counted. The child
imports everything (ours: also the calibration code and scipy.optimize, which it loads), starts its runtime: the same
engine on a one-convolution model and a million input values (thread pools, kernels, and code compiled on first use —
ours: numba's compiled DAC/ADC passes, ~110 MiB resident once loaded — are start-up, not the model; reported apart),
then records its resident set (VmRSS), builds the session / network, returns freed heap
to the system (glibc malloc_trim), resets the kernel's peak-RSS counter (writing 5 to /proc/self/clear_refs: Linux),
runs inference on the batch, and reports VmHWM - baseline: the memory the model and its inference added at their peak. The 8-bit child builds its network
from the calibration file the timing process saved (calibrate once, deploy many: the profiling pass of a calibration
leaves native memory behind — TensorFlow's and the C heap's — that is not the network's); builds are timed separately. Target: ours <= 2x onnxruntime's.

`--single-thread` measures the work instead: onnxruntime, TensorFlow, BLAS and our workers on one thread each, timed by
the process's CPU time (min of repeats) — ratios that a shared, loaded host disturbs far less than wall-clock ones.
The 1-minute load average before and after each case is recorded with it.

Usage:  nice -n 10 .venv/bin/python benchmarks/bench_onnx.py [--quick] [--repeats 5] [--images 256] [--single-thread] [--out FILE.json]
"""
import argparse, ctypes, json, os, platform, subprocess, sys, tempfile, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ENGINES = ("onnxruntime", "ideal", "8bit")


def resnet20_onnx(seed:int=0, classes:int=10) -> onnx.ModelProto:
    "ResNet-20 (v1) for CIFAR as ONNX, NCHW, BatchNorm folded into the convolutions (as torch.onnx exports an eval model)."
    rng = np.random.default_rng(seed)
    nodes, weights, counter = [], [], iter(range(10_000))

    def conv(x, cin, cout, kernel, stride, relu=True):
        index = next(counter)
        w = (rng.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(2 / (cin * kernel * kernel))).astype(np.float32)
        weights.extend([numpy_helper.from_array(w, f"conv{index}.weight"),
                        numpy_helper.from_array((0.1 * rng.standard_normal(cout)).astype(np.float32), f"conv{index}.bias")])
        nodes.append(helper.make_node("Conv", [x, f"conv{index}.weight", f"conv{index}.bias"], [f"conv{index}"], name=f"conv{index}",
                                      kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[kernel // 2] * 4))
        if not relu: return f"conv{index}"
        nodes.append(helper.make_node("Relu", [f"conv{index}"], [f"relu{index}"], name=f"relu{index}"))
        return f"relu{index}"

    x, channels = conv("input", 3, 16, 3, 1), 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            y = conv(conv(x, channels, width, 3, stride), width, width, 3, 1, relu=False)
            shortcut = conv(x, channels, width, 1, stride, relu=False) if stride != 1 or channels != width else x
            name = f"block{stage}_{block}"
            nodes += [helper.make_node("Add", [y, shortcut], [f"{name}_add"], name=f"{name}_add"),
                      helper.make_node("Relu", [f"{name}_add"], [f"{name}_out"], name=f"{name}_relu")]
            x, channels = f"{name}_out", width
    weights += [numpy_helper.from_array((rng.standard_normal((classes, channels)) / 8).astype(np.float32), "fc.weight"),
                numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "resnet20", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_onnx")
    onnx.checker.check_model(model, full_check=True)
    return model


def case_model(case:str) -> tuple:
    "(onnx.ModelProto, test images, calibration images) of a case; images channels first, float32."
    rng = np.random.default_rng(1)
    if case == "resnet20":
        return resnet20_onnx(), None, rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    from crosssim_nb import zoo
    from crosssim_nb.data import load_dataset
    model, preprocess = zoo.load(case)
    return model, preprocess(load_dataset(zoo.info(case)["dataset"], ntest=512).x), preprocess(
        load_dataset(zoo.info(case)["dataset"], split="train", ntest=200).x)


def images_of(case:str, count:int, test_images) -> np.ndarray:
    "`count` test images: the dataset's where the case has them (repeated as needed), else standard normal (seeded)."
    if test_images is not None: return np.resize(test_images, (count,) + test_images.shape[1:])
    return np.random.default_rng(2).standard_normal((count, 3, 32, 32)).astype(np.float32)


BITS = dict(weight_bits=8, dac_bits=8, adc_bits=8)


def calibrated_limits(model:onnx.ModelProto, calibration:np.ndarray):
    "DAC ranges and optimal 8-bit ADC limits for `model`, profiled on `calibration` (a `Calibration`, savable to a file)."
    from crosssim_nb.calibration import calibrate_adc
    from crosssim_nb.config import InferenceConfig
    from crosssim_nb.network import AnalogNetwork
    import crosssim_nb.onnx_import  # noqa: F401  (attaches from_onnx)
    profiling = AnalogNetwork.from_onnx(model, InferenceConfig(**BITS, adc_range_option="MAX"), calibration_data=calibration)
    return calibrate_adc(profiling, calibration, method="optimal")


def build(engine:str, model:onnx.ModelProto, calibration:np.ndarray, threads:int=0, limits=None):
    """A callable x -> outputs for `engine`: an onnxruntime session (`threads` intra-op threads, 0: its default), or our
    ideal or 8-bit network (CALIBRATED ADC: `limits`, a Calibration or its file, else calibrated here on `calibration`)."""
    if engine == "onnxruntime":
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    from crosssim_nb.config import InferenceConfig
    from crosssim_nb.network import AnalogNetwork
    import crosssim_nb.onnx_import  # noqa: F401  (attaches from_onnx)
    if engine == "ideal":
        network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal())
    else:
        limits = calibrated_limits(model, calibration) if limits is None else limits
        network = AnalogNetwork.from_onnx(model, InferenceConfig(**BITS, adc_range_option="CALIBRATED"), adc_limits=limits)
    return lambda x: network.run(x, batch_size=len(x))[0]


def _status(field:str) -> int:
    "A field of /proc/self/status in bytes (VmRSS, VmHWM)."
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"): return int(line.split()[1]) * 1024
    raise KeyError(field)


def tiny_onnx() -> onnx.ModelProto:
    "One 3x3 convolution and a Relu: run once before the baseline, so each runtime's start-up (thread pools, kernels) is not counted."
    weight = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4), helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 8, 8])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def child(engine:str, case:str, images:int, threads:int=0, limits:str|None=None) -> dict:
    "Run in a fresh process: the peak resident memory the model and one inference on `images` images add."
    model, test_images, calibration = case_model(case)
    x = images_of(case, images, test_images)
    # start the runtime: the same engine on a tiny model, with a million input values (so code compiled on first use for
    # large inputs, ours with numba, is loaded too); what that adds is start-up, reported apart from the model's memory
    if engine == "onnxruntime": import onnxruntime  # noqa: F401
    else: import crosssim_nb.onnx_import, crosssim_nb.calibration, scipy.optimize  # noqa: F401, E401
    before = _status("VmRSS")
    warm = np.random.default_rng(3).standard_normal((1 + (1 << 20) // 192, 3, 8, 8)).astype(np.float32)
    build(engine, tiny_onnx(), warm[:64], threads)(warm)
    del warm
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = _status("VmRSS")
    run = build(engine, model, calibration, threads, limits)
    ctypes.CDLL("libc.so.6").malloc_trim(0)    # hand back what building freed (either engine), so it is not counted
    built = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f: f.write("5")   # reset VmHWM to the current RSS
    run(x)
    return dict(engine=engine, case=case, images=images, startup_bytes=baseline - before, built_bytes=built - baseline,
                peak_bytes=_status("VmHWM") - baseline)


def single_thread():
    "One thread for every runtime in this process (call before TensorFlow starts): CPU-time measurements of the work."
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from crosssim_nb import convolution
    convolution.THREADS = 1


def time_case(case:str, images:int, repeats:int, threads:int=0, limits_file:str|None=None, clock=time.perf_counter) -> dict:
    "Build the three engines in this process, then time them interleaved (`clock`); min over repeats, ratios to onnxruntime."
    model, test_images, calibration = case_model(case)
    x = images_of(case, images, test_images)
    runs, build_seconds = {}, {}
    for engine in ENGINES:
        start = time.perf_counter()
        limits = calibrated_limits(model, calibration) if engine == "8bit" else None
        runs[engine] = build(engine, model, calibration, threads, limits)
        build_seconds[engine] = time.perf_counter() - start
        if limits is not None and limits_file: limits.save(limits_file)     # for the memory child
    reference = runs["onnxruntime"](x)
    error = float(np.abs(runs["ideal"](x) - reference).max() / np.abs(reference).max())
    times = {engine: [] for engine in ENGINES}
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
        for engine in ENGINES:
            start = clock()
            runs[engine](x)
            times[engine].append(clock() - start)
    best = {engine: min(t) for engine, t in times.items()}
    return dict(case=case, images=images, repeats=repeats, ideal_relative_error=error, build_seconds=build_seconds,
                seconds=times, ms_per_image={e: 1e3 * t / images for e, t in best.items()},
                ratio_ideal=best["ideal"] / best["onnxruntime"], ratio_8bit=best["8bit"] / best["onnxruntime"],
                load_average=(load_before, os.getloadavg()[0]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images, 2 repeats, ResNet-20 only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=256, help="images per timed call (one batch)")
    parser.add_argument("--cases", nargs="+", default=["resnet20", "fashion_resnet_torch"])
    parser.add_argument("--ort-threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default, one per physical core)")
    parser.add_argument("--no-memory", action="store_true", help="skip the child-process memory measurement")
    parser.add_argument("--single-thread", action="store_true", help="one thread per runtime, CPU time (the work, robust to a loaded host)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--limits", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick: args.images, args.repeats, args.cases = 64, 2, ["resnet20"]
    if args.child:
        print(json.dumps(child(args.child, args.cases[0], args.images, args.ort_threads, args.limits)))
        return
    if args.single_thread: args.ort_threads = 1; single_thread()
    import onnxruntime
    results = dict(single_thread=args.single_thread, host=platform.processor() or platform.machine(), cpus=os.cpu_count(), onnxruntime=onnxruntime.__version__,
                   onnxruntime_threads=args.ort_threads or "default",
                   numpy=np.__version__, cases=[])
    for case in args.cases:
        if case != "resnet20":
            from crosssim_nb import zoo
            if case not in zoo.read_manifest()["models"]:
                print(f"{case}: not in the zoo, skipped"); continue
        limits_file = os.path.join(tempfile.mkdtemp(prefix="bench_onnx_"), f"{case}_limits.yaml")
        timing = time_case(case, args.images, args.repeats, args.ort_threads, limits_file,
                           time.process_time if args.single_thread else time.perf_counter)
        ms = timing["ms_per_image"]
        what = "CPU ms/image, one thread each" if args.single_thread else "ms/image"
        print(f"{case}: {args.images} images, min of {args.repeats}, load {timing['load_average'][0]:.1f}-{timing['load_average'][1]:.1f}: "
              f"onnxruntime {ms['onnxruntime']:.3f} {what}, "
              f"ideal {ms['ideal']:.3f} ({timing['ratio_ideal']:.2f}x, target <= 1.5x), "
              f"8-bit calibrated {ms['8bit']:.3f} ({timing['ratio_8bit']:.2f}x, target <= 2.5x); "
              f"ideal vs onnxruntime max error {timing['ideal_relative_error']:.1e} of max|output|", flush=True)
        if not args.no_memory:
            peaks, built, startup = {}, {}, {}
            for engine in ENGINES:
                done = subprocess.run([sys.executable, __file__, "--child", engine, "--cases", case, "--images", str(args.images),
                                       "--ort-threads", str(args.ort_threads), "--limits", limits_file],
                                      capture_output=True, text=True, check=True)
                report = json.loads(done.stdout.strip().splitlines()[-1])
                peaks[engine], built[engine], startup[engine] = report["peak_bytes"], report["built_bytes"], report["startup_bytes"]
            timing["peak_bytes"], timing["built_bytes"], timing["startup_bytes"] = peaks, built, startup
            timing["memory_ratio_ideal"] = peaks["ideal"] / peaks["onnxruntime"]
            timing["memory_ratio_8bit"] = peaks["8bit"] / peaks["onnxruntime"]
            print(f"{case}: peak memory added by model + inference: onnxruntime {peaks['onnxruntime'] / 2**20:.1f} MiB, "
                  f"ideal {peaks['ideal'] / 2**20:.1f} MiB ({timing['memory_ratio_ideal']:.2f}x), 8-bit "
                  f"{peaks['8bit'] / 2**20:.1f} MiB ({timing['memory_ratio_8bit']:.2f}x; target <= 2x); of which held after "
                  f"building: {built['onnxruntime'] / 2**20:.1f}, {built['ideal'] / 2**20:.1f}, {built['8bit'] / 2**20:.1f} MiB; runtime start-up (not counted) {startup['onnxruntime'] / 2**20:.0f}, "
                  f"{startup['ideal'] / 2**20:.0f}, {startup['8bit'] / 2**20:.0f} MiB", flush=True)
        results["cases"].append(timing)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f: json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
