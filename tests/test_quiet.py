"""Quiet output: the CLI's main job and repeated inference calls print none of TensorFlow's start-up lines (absl
banner, oneDNN, cudart, cuInit) and no tf.function retracing notices; viewers used from a script print no Figure repr."""
import os, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cudart_stub|Could not find cuda drivers|cuInit"
                   r"|cpu_feature_guard|tf\.function retracing|Figure\(\d")

def _run(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)                    # as a user's shell: the package quiets TensorFlow itself
    env.pop("CUDA_VISIBLE_DEVICES", None)                    # (an empty value would hide the cuInit attempt)
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

def test_demo_stderr_is_quiet(tmp_path):
    done = _run([sys.executable, "-m", "crosssim_nb.cli", "demo", "--ntest", "50"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "crosssim_nb inference: mnist_cnn on mnist (50 images), 3 runs" in done.stdout
    assert not NOISE.search(done.stderr), done.stderr[-4000:]
    assert not NOISE.search(done.stdout)

SCRIPT = '''
from crosssim_nb import InferenceConfig, AnalogNetwork, run_inference, zoo
from crosssim_nb.array_viewer import ArrayViewer
for _ in range(6):     # a new Keras model per call: TensorFlow would report tf.function retracing from the 5th on
    result = run_inference("mnist_mlp", "mnist", InferenceConfig.ideal(), ntest=20, progress=False)
viewer = ArrayViewer(AnalogNetwork.from_keras(zoo.load("mnist_mlp").model, InferenceConfig.ideal()))
viewer.layer.value = viewer.layer.options[-1]              # redraw: no Figure(...) repr on stdout
print("done", result.ntest)
'''

def test_repeated_runs_and_viewer_are_quiet(tmp_path):
    done = _run([sys.executable, "-c", SCRIPT], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "done 20", done.stdout
    assert not NOISE.search(done.stderr), done.stderr[-4000:]


def test_wide_compiles_print_no_llvm_remarks(capfd):
    "The read-noise kernels are compiled with a forced 16-lane vector width on AVX-512; a loop LLVM cannot widen makes it"
    " print a 'remark:' line on stderr, which the compile wrapper drops (and the function still computes the right thing)."
    import numba, numpy as np, pytest
    from crosssim_nb.keyed_noise import _run_wide, _without_llvm_remarks
    import llvmlite.binding as llvm

    @numba.njit
    def stops_early(x):
        total = 0.0
        for i in range(x.size):
            if x[i] > 0.5: total += x[i]
            elif x[i] < 0.1: break
        return total
    x = np.linspace(0.2, 1, 100)
    llvm.set_option("", "-force-vector-width=16")
    try:
        with _without_llvm_remarks(): stops_early.compile((numba.typeof(x),))
    finally: llvm.set_option("", "-force-vector-width=0")
    assert stops_early(x) == pytest.approx(x[x > 0.5].sum()) and _run_wide(stops_early, x) == pytest.approx(x[x > 0.5].sum())
    assert "remark" not in capfd.readouterr().err


SEARCH_FIRST = '''
import numpy as np, importlib.util
from crosssim_nb import AnalogCore, InferenceConfig
assert importlib.util.find_spec("tensorflow") is not None        # asking whether TensorFlow is there is not importing it
core = AnalogCore(np.ones((4, 8)), InferenceConfig(noise_model="generic", alpha_noise=0.01))   # (asks that too)
core @ np.ones(8)
import tensorflow as tf
print("done", float(tf.reduce_sum(tf.ones(3))))
'''

def test_tensorflow_stays_quiet_after_a_lookup(tmp_path):
    "The filter stays in place until TensorFlow actually loads, whatever looked it up before."
    done = _run([sys.executable, "-c", SEARCH_FIRST], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "done 3.0"
    assert not NOISE.search(done.stderr), done.stderr[-4000:]
