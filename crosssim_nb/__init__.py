"""crosssim_nb: simulate neural-network inference on analog in-memory-computing (resistive crossbar) hardware."""
__version__ = "0.1.0"

from crosssim_nb.config import InferenceConfig
from crosssim_nb.core import AnalogCore
import crosssim_nb.crosssim_compat   # InferenceConfig.from_crosssim / to_crosssim / preset

_LAZY = {  # heavy modules (TensorFlow) load on first use
    "AnalogNetwork": "crosssim_nb.network",
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
