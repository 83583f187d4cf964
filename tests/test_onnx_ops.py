"The digital ONNX operations of `crosssim_nb.onnx_ops` equal onnxruntime on one-node graphs, across opsets 11, 13, 17 and 21."
import numpy as np
import pytest
import onnx
from onnx import helper, TensorProto
from crosssim_nb.onnx_ops import check_op, run_op, ONNX_OPS

OPSETS = (11, 13, 17, 21)
rng = np.random.default_rng(0)
X = (rng.normal(size=(2, 3, 6, 7)) * 2).astype(np.float32)
POSITIVE = np.abs(X) + 0.1
I64 = lambda *v: np.array(v, np.int64)

# (op, inputs, attributes, first opset, last opset, constant inputs); attributes that moved to inputs have a case per form
CASES = [(op, [X], {}, 11, 21, ()) for op in ("Relu", "Sigmoid", "HardSwish", "Tanh", "Erf", "Softplus", "Softsign", "Neg", "Abs",
                                               "Exp", "Floor", "Ceil", "Round", "Sign", "Identity", "Selu", "Elu", "Celu")]
CASES += [("Mish", [X], {}, 18, 21, ()), ("Gelu", [X], {"approximate": "tanh"}, 20, 21, ()), ("Gelu", [X], {}, 20, 21, ()),
          ("Log", [POSITIVE], {}, 11, 21, ()), ("Sqrt", [POSITIVE], {}, 11, 21, ()), ("Reciprocal", [POSITIVE], {}, 11, 21, ()),
          ("LeakyRelu", [X], {"alpha": 0.2}, 11, 21, ()), ("HardSigmoid", [X], {"alpha": 0.25, "beta": 0.4}, 11, 21, ()),
          ("ThresholdedRelu", [X], {"alpha": 0.3}, 11, 21, ()), ("Shrink", [X], {"bias": 0.5, "lambd": 0.7}, 11, 21, ()),
          ("Clip", [X, np.float32(-1), np.float32(2)], {}, 11, 21, (1, 2)), ("Clip", [X, np.float32(0)], {}, 11, 21, (1,)),
          ("PRelu", [X, np.abs(rng.normal(size=(3, 1, 1))).astype(np.float32)], {}, 11, 21, (1,)),
          ("Dropout", [X], {}, 11, 21, ()), ("Cast", [X], {"to": TensorProto.INT32}, 11, 21, ())]
CASES += [(op, [X, X[0, :, :1]], {}, 11, 21, ()) for op in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater")]
CASES += [("LessOrEqual", [X, X[0, :, :1]], {}, 12, 21, ()), ("GreaterOrEqual", [X, X[0, :, :1]], {}, 12, 21, ()),
          ("Pow", [POSITIVE, X[0, :, :1]], {}, 11, 21, ()), ("Where", [X > 0, X, X[:, :, :1]], {}, 11, 21, ()),
          ("Not", [X > 0], {}, 11, 21, ()), ("Max", [X, X[:1] * 0.5, X[0, 0, 0]], {}, 11, 21, ()),
          ("Min", [X, X[:1] * 0.5], {}, 11, 21, ()), ("Sum", [X, X[:1]], {}, 11, 21, ()), ("Mean", [X, X[:1], X], {}, 11, 21, ())]
CASES += [("Sin", [X], {}, 11, 21, ()), ("Cos", [X], {}, 11, 21, ()), ("Or", [X > 0, X < 1], {}, 11, 21, ()), ("Xor", [X > 0, X < 1], {}, 11, 21, ()),
          ("BitwiseAnd", [I64(5, 6), I64(3, 3)], {}, 18, 21, ()), ("BitwiseOr", [I64(5, 6), I64(3, 3)], {}, 18, 21, ()),
          ("CastLike", [X, np.zeros(1, np.float16)], {}, 15, 21, ()),
          ("Constant", [], {"value": helper.make_tensor("v", TensorProto.FLOAT, [2], [1.5, 2])}, 11, 21, ()),
          ("Constant", [], {"value_ints": [1, 2]}, 12, 21, ())]
# shapes and data movement
CASES += [("Reshape", [X, I64(0, -1, 7)], {}, 11, 21, (1,)), ("Flatten", [X], {"axis": 2}, 11, 21, ()),
          ("Transpose", [X], {"perm": [0, 2, 3, 1]}, 11, 21, ()), ("Concat", [X, X[:, :1]], {"axis": 1}, 11, 21, ()),
          ("Squeeze", [X[:, :1]], {"axes": [1]}, 11, 12, ()), ("Squeeze", [X[:, :1], I64(1)], {}, 13, 21, (1,)),
          ("Unsqueeze", [X], {"axes": [0, 4]}, 11, 12, ()), ("Unsqueeze", [X, I64(-1, 1)], {}, 13, 21, (1,)),
          ("Slice", [X, I64(-1, 1), I64(-100, 5), I64(3, 2), I64(-2, 2)], {}, 11, 21, (1, 2, 3, 4)),
          ("Gather", [X, I64(2, -1, 0)], {"axis": 3}, 11, 21, ()), ("GatherElements", [X, np.abs(I64(*range(-3, 3)) % 3).reshape(1, 1, 1, 6)], {"axis": 1}, 11, 21, ()),
          ("GatherND", [X, I64(1, 2, 3).reshape(1, 3)], {}, 11, 21, ()),
          ("ScatterND", [X, I64(0, 1).reshape(1, 2), np.ones((1, 6, 7), np.float32)], {}, 11, 21, ()),
          ("Expand", [X[:, :1], I64(2, 3, 1, 1)], {}, 11, 21, (1,)), ("Tile", [X, I64(1, 1, 2, 1)], {}, 11, 21, (1,)),
          ("CumSum", [X, I64(3)], {"reverse": 1}, 11, 21, (1,)), ("Shape", [X], {}, 11, 21, ()), ("Size", [X], {}, 11, 21, ()),
          ("Split", [X], {"axis": 2, "split": [2, 4]}, 11, 12, ()), ("Split", [X, I64(2, 4)], {"axis": 2}, 13, 21, (1,)),
          ("Range", [np.float32(1), np.float32(4), np.float32(0.5)], {}, 11, 21, ()),
          ("ConstantOfShape", [I64(2, 3)], {"value": helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])}, 11, 21, ()),
          ("DepthToSpace", [X[:, :, :2, :3].repeat(4, axis=1)[:, :8]], {"blocksize": 2, "mode": "CRD"}, 11, 21, ()),
          ("SpaceToDepth", [X[:, :, :6, :6]], {"blocksize": 3}, 11, 21, ()),
          ("Einsum", [X, rng.normal(size=(7, 4)).astype(np.float32)], {"equation": "nchw,wk->nkhc"}, 12, 21, ()),
          ("MatMul", [X, rng.normal(size=(7, 4)).astype(np.float32)], {}, 11, 21, ())]
# reductions, softmax, normalisations
for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare"):
    CASES += [(op, [X], {"axes": [1, 3], "keepdims": 0}, 11, 17, ()), (op, [X, I64(2)], {}, 18, 21, (1,))]
CASES += [("ReduceSum", [X], {"axes": [1]}, 11, 12, ()), ("ReduceSum", [X, I64(-1, 1)], {"keepdims": 0}, 13, 21, (1,)),
          ("Softmax", [X], {"axis": 1}, 11, 21, ()), ("LogSoftmax", [X], {}, 11, 21, ()),
          ("BatchNormalization", [X] + [np.abs(rng.normal(size=3)).astype(np.float32) + 0.5 for _ in range(4)], {"epsilon": 0.01}, 11, 21, ()),
          ("InstanceNormalization", [X, np.ones(3, np.float32) * 0.5, np.zeros(3, np.float32) + 0.1], {}, 11, 21, ()),
          ("LayerNormalization", [X, rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32)], {}, 17, 21, ()),
          ("GroupNormalization", [X[:, :2].repeat(2, axis=1), *(rng.normal(size=4).astype(np.float32) for _ in range(2))], {"num_groups": 2}, 21, 21, ()),
          ("LRN", [X], {"size": 3}, 11, 21, ()), ("LpNormalization", [X], {"axis": 1}, 11, 21, ())]
# pooling, padding, resizing
CASES += [("MaxPool", [X], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, 11, 21, ()),
          ("MaxPool", [X], {"kernel_shape": [2, 2], "dilations": [2, 2]}, 11, 21, ()),
          ("AveragePool", [X], {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "count_include_pad": 1}, 11, 21, ()),
          ("AveragePool", [X], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, 11, 21, ()),
          ("AveragePool", [X], {"kernel_shape": [2, 2], "dilations": [2, 1]}, 19, 21, ()),
          ("GlobalAveragePool", [X], {}, 11, 21, ()), ("GlobalMaxPool", [X], {}, 11, 21, ()),
          ("Pad", [X, I64(0, 0, 1, 2, 0, 1, 2, 0), np.float32(0.5)], {"mode": "constant"}, 11, 21, (1, 2)),
          ("Pad", [X, I64(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "reflect"}, 11, 21, (1,)),
          ("Pad", [X, I64(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "edge"}, 11, 21, (1,)),
          ("Resize", [X, np.array([], np.float32), np.array([1, 1, 2, 2], np.float32)], {"mode": "nearest"}, 11, 12, (1, 2)),
          ("Resize", [X, None, np.array([1, 1, 2, 1.5], np.float32)], {"mode": "linear"}, 13, 21, (2,)),
          ("Resize", [X, None, None, I64(2, 3, 9, 5)], {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 13, 21, (3,)),
          ("Resize", [X, None, np.array([1, 1, 2, 2], np.float32)], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                                                       "nearest_mode": "floor"}, 13, 21, (2,))]

def case_id(case): return f"{case[0]}-{'-'.join(f'{k}={v}' for k, v in case[2].items() if k != 'value')}"

@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_equals_onnxruntime(case, opset):
    op, inputs, attributes, first, last, constants = case
    if not first <= opset <= last: pytest.skip(f"{op} in this form exists in opsets {first}-{last}")
    try: onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError: pytest.skip(f"{op} does not exist in opset {opset}")
    n_outputs = 2 if op == "Split" else 1
    assert check_op(op, inputs, attributes, opset, n_outputs=n_outputs, constant_inputs=constants) <= 1e-4


def test_every_digital_op_has_a_case():
    "Each implemented operation is compared with onnxruntime here or in the notebook's cells (by name)."
    covered = {c[0] for c in CASES}
    notebook_only = {"Mod", "And", "ArgMax", "ArgMin", "ScatterElements", "ReduceL1", "ReduceLogSum", "ReduceLogSumExp", "LpPool",
                     "GlobalLpPool", "Gemm", "Attention", "RMSNormalization"}   # (the last two: opset 23, beyond OPSETS here)
    assert set(ONNX_OPS) - covered - notebook_only == set()


def test_channels_last_views_keep_their_layout():
    "Digital operations on a transposed view of channels-last data return channels-last data (no layout copy)."
    view = np.ascontiguousarray(X.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for op, attributes in [("Relu", {}), ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
                           ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
                           ("Pad", {}), ("Add", {})]:
        inputs = [view] + ([I64(0, 0, 1, 1, 0, 0, 1, 1)] if op == "Pad" else []) + ([view] if op == "Add" else [])
        out = run_op(op, inputs, attributes)[0]
        assert out.transpose(0, 2, 3, 1).flags.c_contiguous, op


def test_unknown_op_is_refused():
    with pytest.raises(NotImplementedError, match="no NumPy implementation"): run_op("NoSuchOperation", [X])
