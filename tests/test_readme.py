"""README.md is executable: every fenced python / bash block runs as written, at small sizes.

Python blocks run one after the other in one process, each in a fresh namespace (as if pasted into a fresh
interpreter: nothing carries over but the imported modules), with `__name__ == "__main__"`. Bash blocks run with
`bash -eu` and the environment's `crosssim-nb` first on PATH. Everything runs in a scratch folder holding a link to
`sweeps/`, so paths in the README resolve as from the repository root. A block preceded by
`<!-- readme-test: skip (reason) -->` is not run (set-up, the test suite, a SLURM cluster). Sizes are made small by
the substitutions in SHRINK, each of which must still find its text in the README (so they cannot silently go stale).
"""
import json, os, re, subprocess, sys, textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+?)\)\s*-->")
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cudart_stub|cuInit|tf\.function retracing|Figure\(\d")

SHRINK = [  # (text in README, replacement in the test): sizes only, never names or commands
    ("ntest=1000", "ntest=100"),
    ('load_dataset("fashion_mnist", split="train", ntest=500)', 'load_dataset("fashion_mnist", split="train", ntest=100)'),
    ('load_dataset("mnist", split="train", ntest=500)', 'load_dataset("mnist", split="train", ntest=100)'),
    ('load_dataset("fashion_mnist", ntest=256)', 'load_dataset("fashion_mnist", ntest=64)'),
    ('load_dataset("mnist", ntest=256)', 'load_dataset("mnist", ntest=64)'),
    ('{"adc_bits": [4, 5, 6, 7, 8, 10], "adc_range_option": ["MAX", "CALIBRATED"]}', '{"adc_bits": [6], "adc_range_option": ["CALIBRATED"]}'),
    ('parameters={"ntest": 1000, "nruns": 3}', 'parameters={"ntest": 50, "nruns": 1, "calibration_samples": 100}, n_workers=1'),
    ("adc_bits: [4, 6, 8]\\nparameters:\\n  ntest: 1000\\n  nruns: 3\\n",
     "adc_bits: [6]\\nparameters:\\n  ntest: 50\\n  nruns: 1\\n  calibration_samples: 100\\n"),
    ("--nruns 5", "--nruns 2"),
    ("crosssim-nb run ", "crosssim-nb run --ntest 50 --calibration-samples 100 "),
    ("crosssim-nb calibrate ", "crosssim-nb calibrate --calibration-samples 100 "),
    ("crosssim-nb sweep sweeps/accuracy_vs_adc_bits.ipynb adc_bits.yaml --out runs/adc_bits_cli",
     "crosssim-nb sweep sweeps/accuracy_vs_adc_bits.ipynb adc_bits.yaml --out runs/adc_bits_cli --n-workers 0"),
]

def readme_blocks() -> list:
    "`(language, code, skip reason or None)` of every fenced python / bash block, in order."
    text, blocks = README.read_text(), []
    for match in BLOCK.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        skip = SKIP.search(before[-1]) if before else None
        blocks.append((match.group(1), match.group(2), skip.group(1) if skip else None))
    return blocks

def shrink(code:str) -> str:
    for old, new in SHRINK: code = code.replace(old, new)
    return code

def test_readme_blocks_are_found_and_skips_are_few():
    blocks = readme_blocks()
    assert sum(language == "python" for language, _, _ in blocks) >= 5
    assert sum(language == "bash" for language, _, _ in blocks) >= 3
    skipped = [reason for _, _, reason in blocks if reason]
    assert len(skipped) == 3, skipped                         # run.sh, test.sh, SLURM: nothing else is skipped
    text = README.read_text()
    stale = [old for old, _ in SHRINK if old not in text]
    assert not stale, f"SHRINK entries no longer in README.md: {stale}"

def _environment(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)                    # the package quiets TensorFlow by itself
    (tmp_path / "sweeps").symlink_to(ROOT / "sweeps")
    return env

RUNNER = textwrap.dedent('''
    import sys, traceback, warnings
    if __name__ == "__main__":                               # (a LocalCluster's workers import this script again)
        blocks = __BLOCKS__
        failed = []
        for index, code in blocks:
            print(f"=== README python block {index}", flush=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("always")
                    exec(compile(code, f"<README.md python block {index}>", "exec"), {"__name__": "__main__"})
            except Exception:
                traceback.print_exc()
                failed.append(index)
        sys.exit(f"README python blocks failed: {failed}" if failed else 0)
''')

def test_readme_python_blocks_run(tmp_path):
    blocks = [(i, shrink(code)) for i, (language, code, skip) in enumerate(readme_blocks()) if language == "python" and not skip]
    script = tmp_path / "run_readme.py"
    script.write_text(RUNNER.replace("__BLOCKS__", repr(blocks)))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_environment(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    assert "crosssim_nb inference: mnist_cnn on mnist (100 images), 3 runs" in done.stdout   # block 1 printed its result
    assert (tmp_path / "limits.yaml").is_file() and (tmp_path / "adc_bits.png").is_file()
    assert (tmp_path / "runs" / "adc_bits" / "results.csv").is_file()
    assert not NOISE.search(done.stderr), done.stderr[-4000:]
    executed = list((tmp_path / "runs" / "adc_bits" / "points").glob("*/*.ipynb"))   # papermill's notebooks: quiet too
    assert executed
    for path in executed:
        outputs = json.dumps([cell.get("outputs", []) for cell in json.loads(path.read_text())["cells"]])
        assert not NOISE.search(outputs), (path, NOISE.search(outputs).group(0))

def test_readme_bash_blocks_run(tmp_path):
    blocks = [shrink(code) for language, code, skip in readme_blocks() if language == "bash" and not skip]
    env = _environment(tmp_path)
    for code in blocks:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{code}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        assert not NOISE.search(done.stderr), done.stderr[-4000:]
    assert (tmp_path / "limits.json").is_file() and (tmp_path / "result.json").is_file()
    assert (tmp_path / "runs" / "adc_bits_cli" / "results.csv").is_file()
