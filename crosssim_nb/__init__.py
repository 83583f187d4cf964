"""crosssim_nb: simulate neural-network inference on analog in-memory-computing (resistive crossbar) hardware."""
__version__ = "0.1.0"

import os as _os, sys as _sys

# TensorFlow's start-up lines (absl banner, oneDNN, cudart, cuInit) are noise for a simulator user. TF_CPP_MIN_LOG_LEVEL
# silences what TensorFlow logs after its logger starts; the lines it writes while loading (before absl::InitializeLog)
# ignore it, so the first `import tensorflow` (by Keras, the zoo, a network...) runs with those lines filtered out.
# Set TF_CPP_MIN_LOG_LEVEL=0 or 1 before importing crosssim_nb to see them all.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

def _quiet_tensorflow_import():
    "Install a one-shot import hook that filters TensorFlow's loading lines from stderr (other stderr output is kept)."
    if "tensorflow" in _sys.modules or _os.environ.get("TF_CPP_MIN_LOG_LEVEL") not in ("2", "3"): return
    import contextlib, importlib.abc, importlib.util, re, tempfile
    noise = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
                       r"|To enable the following instructions:|This TensorFlow binary is optimized)")

    @contextlib.contextmanager
    def filtered_stderr():
        try: _sys.stderr.flush(); saved = _os.dup(2)
        except (OSError, ValueError, AttributeError): yield; return      # no real stderr: nothing to filter
        with tempfile.TemporaryFile() as capture:
            _os.dup2(capture.fileno(), 2)
            try: yield
            finally:
                try: _sys.stderr.flush()
                except (OSError, ValueError): pass
                _os.dup2(saved, 2); _os.close(saved)
                capture.seek(0)
                kept = [line for line in capture.read().decode(errors="replace").splitlines(True) if not noise.match(line)]
                if kept: _sys.stderr.write("".join(kept)); _sys.stderr.flush()

    class QuietLoader:
        def __init__(self, loader, finder): self.loader, self.finder = loader, finder
        def create_module(self, spec): return self.loader.create_module(spec)
        def exec_module(self, module):
            if self.finder in _sys.meta_path: _sys.meta_path.remove(self.finder)   # one shot: TensorFlow loads once
            module.__spec__.loader = module.__loader__ = self.loader      # TensorFlow sees its own loader
            with filtered_stderr(): self.loader.exec_module(module)

    class QuietFinder(importlib.abc.MetaPathFinder):
        searching = False                 # (its own find_spec call below must not come back here)
        def find_spec(self, name, path=None, target=None):
            if name != "tensorflow" or self.searching: return None
            self.searching = True         # a mere find_spec (is TensorFlow installed?) leaves the hook in place
            try: spec = importlib.util.find_spec(name)
            finally: self.searching = False
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"): return spec
            spec.loader = QuietLoader(spec.loader, self)
            return spec

    _sys.meta_path.insert(0, QuietFinder())

_quiet_tensorflow_import()

from crosssim_nb.config import InferenceConfig
from crosssim_nb.core import AnalogCore
import crosssim_nb.crosssim_compat   # InferenceConfig.from_crosssim / to_crosssim / preset

_LAZY = {  # heavy modules (TensorFlow) load on first use
    "AnalogNetwork": "crosssim_nb.onnx_import",   # (the network module's class, with from_onnx / from_torch attached)
    "InputPreprocessing": "crosssim_nb.inference",
    "load_dataset": "crosssim_nb.data",
    "run_inference": "crosssim_nb.inference",
}

def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "zoo":
        import importlib
        return importlib.import_module("crosssim_nb.zoo")
    raise AttributeError(f"module 'crosssim_nb' has no attribute {name!r}")
