"""A stand-in for CuPy on the CPU, for tests of the `use_gpu=True` code paths where no GPU is lent.

Its arrays hold a NumPy array inside a wrapper that keeps CuPy's rules at the host/device boundary, which is where
array code written for NumPy breaks on a GPU:
- NumPy refuses them implicitly: `np.asarray(device_array)`, `host[...] = device_array` and a NumPy ufunc or function
  mixing them with host arrays raise TypeError, as CuPy does; `.get()` copies to the host.
- `device[...] = host_array` and a device ufunc with a host array argument raise TypeError too (CuPy refuses the latter).
- Compiled (numba) kernels and TensorFlow refuse them: they are not NumPy arrays, nor do they convert to one.
- Reductions return 0-d device arrays, not Python numbers (`bool()`/`float()` on them are explicit, and allowed).
Module functions are NumPy's, run on the unwrapped arrays and wrapped back; `random.default_rng` wraps NumPy's generator.
It emulates semantics, not speed, and cannot show what a real GPU does with memory, streams or float rounding.
"""
import types
import numpy as np

__version__ = "0.0-fake"


def _refuse_host(value, what):
    if isinstance(value, np.ndarray):
        raise TypeError(f"fake cupy: {what} got a NumPy array (shape {value.shape}); CuPy needs cupy.asarray() first")


def _unwrap(value, what="a device operation"):
    "The NumPy array inside a device array; host arrays are refused; lists and tuples are unwrapped item by item."
    if isinstance(value, ndarray): return value._a
    _refuse_host(value, what)
    if isinstance(value, (list, tuple)): return type(value)(_unwrap(v, what) for v in value)
    return value


def _wrap(value):
    if isinstance(value, np.ndarray): return ndarray(value)
    if isinstance(value, np.generic): return ndarray(np.asarray(value))       # reductions give 0-d device arrays
    if isinstance(value, tuple): return tuple(_wrap(v) for v in value)
    if isinstance(value, list): return [_wrap(v) for v in value]
    return value


class ndarray:
    "A device array: a NumPy array behind CuPy's boundary rules."
    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, array): self._a = array

    # the boundary
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly.")
    def get(self, stream=None, order="C", out=None):
        if out is not None: out[...] = self._a; return out
        return np.array(self._a, order=order)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = [_unwrap(x, f"ufunc {ufunc.__name__}") for x in inputs]
        if "out" in kwargs:
            outs = kwargs["out"]
            for o in outs:
                if not isinstance(o, ndarray): raise TypeError(f"fake cupy: ufunc {ufunc.__name__} out= must be a device array")
            kwargs["out"] = tuple(o._a for o in outs)
            getattr(ufunc, method)(*inputs, **kwargs)
            return outs[0] if len(outs) == 1 else outs
        return _wrap(getattr(ufunc, method)(*inputs, **kwargs))

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(list(args), func.__name__), **{k: _unwrap(v, func.__name__) for k, v in kwargs.items()}))

    # attributes and methods, as NumPy's, results on the device
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))

    def __getattr__(self, name):              # methods: reshape, astype, sum, min, max, swapaxes, copy, view, fill, ...
        method = getattr(self._a, name)
        if not callable(method): raise AttributeError(name)
        def call(*args, **kwargs):
            if name == "astype" and kwargs.get("copy") is False and np.dtype(args[0] if args else kwargs["dtype"]) == self._a.dtype: return self
            return _wrap(method(*_unwrap(list(args), name), **{k: _unwrap(v, name) for k, v in kwargs.items()}))
        return call

    def __len__(self): return len(self._a)
    def __iter__(self): return (ndarray(row) for row in self._a) if self._a.ndim > 1 else (ndarray(np.asarray(v)) for v in self._a)
    def __getitem__(self, key): return _wrap(self._a[_index(key)])
    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            raise TypeError("fake cupy: device[...] = host array (non-scalar); use cupy.asarray() first")
        self._a[_index(key)] = value._a if isinstance(value, ndarray) else value

    def __bool__(self): return bool(self._a)
    def __float__(self): return float(self._a)
    def __int__(self): return int(self._a)
    def __repr__(self): return f"fake_cupy.ndarray({self._a!r})"


def _index(key):
    "Indices may be device arrays (as CuPy's are) or host integer arrays (CuPy copies those over)."
    if isinstance(key, tuple): return tuple(k._a if isinstance(k, ndarray) else k for k in key)
    return key._a if isinstance(key, ndarray) else key


def _binary(ufunc, reflected=False):
    if reflected: return lambda self, other: ufunc(other, self)
    return lambda self, other: ufunc(self, other)

def _inplace(ufunc):
    def operate(self, other):
        ufunc(self, other, out=(self,))
        return self
    return operate

for _name, _ufunc in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("truediv", np.true_divide),
                      ("floordiv", np.floor_divide), ("mod", np.remainder), ("pow", np.power), ("matmul", np.matmul),
                      ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                      ("lshift", np.left_shift), ("rshift", np.right_shift)]:
    setattr(ndarray, f"__{_name}__", _binary(_ufunc))
    setattr(ndarray, f"__r{_name}__", _binary(_ufunc, reflected=True))
    setattr(ndarray, f"__i{_name}__", _inplace(_ufunc))
for _name, _ufunc in [("lt", np.less), ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal),
                      ("eq", np.equal), ("ne", np.not_equal)]:
    setattr(ndarray, f"__{_name}__", _binary(_ufunc))
ndarray.__neg__ = lambda self: np.negative(self)
ndarray.__abs__ = lambda self: np.absolute(self)
ndarray.__invert__ = lambda self: np.invert(self)
ndarray.__hash__ = None


# the module's functions
def asarray(a, dtype=None, order=None):
    "Host to device (a copy), or the device array itself (cast where `dtype` differs)."
    if isinstance(a, ndarray): return a if dtype is None or np.dtype(dtype) == a.dtype else ndarray(a._a.astype(dtype))
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))

def _function(name):
    function = getattr(np, name)
    def call(*args, **kwargs):
        args = [_unwrap(a, f"cupy.{name}") for a in args]
        out = kwargs.pop("out", None)
        kwargs = {k: _unwrap(v, f"cupy.{name}") for k, v in kwargs.items()}
        if out is not None:
            if not isinstance(out, ndarray): raise TypeError(f"fake cupy: cupy.{name} out= must be a device array")
            function(*args, out=out._a, **kwargs)
            return out
        return _wrap(function(*args, **kwargs))
    call.__name__ = name
    return call

def __getattr__(name):
    "NumPy's name: dtypes and constants as they are, functions and ufuncs on the device."
    value = getattr(np, name)
    if isinstance(value, type) or isinstance(value, (int, float, np.dtype)) or not callable(value): return value
    return _function(name)


class _Generator:
    "NumPy's generator, its arrays on the device."
    def __init__(self, seed): self._rng = np.random.default_rng(seed)
    def __getattr__(self, name):
        method = getattr(self._rng, name)
        return lambda *args, **kwargs: _wrap(method(*args, **kwargs))

random = types.SimpleNamespace(default_rng=_Generator)


def _as_strided(x, shape=None, strides=None):
    "`cupy.lib.stride_tricks.as_strided`: a view of a device array (CuPy's signature: no `writeable`, no `subok`)."
    if not isinstance(x, ndarray): raise TypeError("fake cupy: as_strided needs a device array")
    return ndarray(np.lib.stride_tricks.as_strided(x._a, shape, strides))

lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=_as_strided))

