"PyTorch modules through `AnalogNetwork.from_torch` (torch.onnx in memory, then from_onnx) equal onnxruntime and the module itself."
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import sys
import numpy as np
import pytest
from crosssim_nb.config import InferenceConfig
from crosssim_nb.onnx_import import UnsupportedModelError
from crosssim_nb import AnalogNetwork          # (with from_onnx / from_torch attached by crosssim_nb.onnx_import)

torch = pytest.importorskip("torch")
nn = torch.nn
TOLERANCE = 1e-4


def layer_cases():
    "(name, module, input shape): every torch.nn layer with weights, and the standard activation, pooling, padding, upsampling and normalisation layers."
    torch.manual_seed(0)
    image, volume, sequence = (2, 4, 8, 8), (2, 4, 4, 6, 6), (2, 4, 12)
    cases = [("Linear", nn.Linear(12, 5), (2, 3, 12)), ("Conv1d", nn.Conv1d(4, 6, 3, padding=1, stride=2), sequence),
             ("Conv2d", nn.Conv2d(4, 6, 3, padding=2, dilation=2), image), ("Conv2d_grouped", nn.Conv2d(4, 6, 3, groups=2, padding=1), image),
             ("Conv2d_depthwise", nn.Conv2d(4, 8, 3, groups=4, stride=2, padding=1), image), ("Conv3d", nn.Conv3d(4, 3, 3, padding=1), volume),
             ("ConvTranspose1d", nn.ConvTranspose1d(4, 3, 3, stride=2), sequence),
             ("ConvTranspose2d", nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), image),
             ("ConvTranspose3d", nn.ConvTranspose3d(4, 2, 2, stride=2), volume),
             ("BatchNorm1d", nn.Sequential(nn.Linear(12, 6), nn.BatchNorm1d(6)), (4, 12)), ("BatchNorm2d", nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), image),
             ("BatchNorm3d", nn.BatchNorm3d(4), volume), ("InstanceNorm2d", nn.InstanceNorm2d(4, affine=True), image),
             ("LayerNorm", nn.LayerNorm(12), (2, 3, 12)), ("GroupNorm", nn.GroupNorm(2, 4), image), ("LocalResponseNorm", nn.LocalResponseNorm(3), image)]
    for activation in (nn.ELU(), nn.Hardshrink(), nn.Hardsigmoid(), nn.Hardtanh(), nn.Hardswish(), nn.LeakyReLU(0.1), nn.LogSigmoid(),
                       nn.PReLU(4), nn.ReLU(), nn.ReLU6(), nn.RReLU(), nn.SELU(), nn.CELU(), nn.GELU(), nn.GELU("tanh"), nn.Sigmoid(), nn.SiLU(),
                       nn.Mish(), nn.Softplus(), nn.Softshrink(), nn.Softsign(), nn.Tanh(), nn.Tanhshrink(), nn.Threshold(0.1, 20.0), nn.GLU(1),
                       nn.Softmin(1), nn.Softmax(1), nn.Softmax2d(), nn.LogSoftmax(1)):
        cases.append((type(activation).__name__ + ("_tanh" if getattr(activation, "approximate", "") == "tanh" else ""),
                      nn.Sequential(nn.Conv2d(4, 4, 1), activation), image))
    for pool, shape in ((nn.MaxPool1d(2), sequence), (nn.MaxPool2d(3, 2, 1, ceil_mode=True), image), (nn.MaxPool3d(2), volume),
                        (nn.AvgPool1d(3, 2, 1), sequence), (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), image),
                        (nn.AvgPool3d(2), volume), (nn.LPPool2d(2, 2), image), (nn.AdaptiveAvgPool2d(1), image),
                        (nn.AdaptiveAvgPool2d(2), image), (nn.AdaptiveMaxPool2d(1), image), (nn.MaxPool2d(2, dilation=2), image)):
        cases.append((type(pool).__name__, pool, shape))
    for pad in (nn.ReflectionPad2d((1, 2, 0, 1)), nn.ReplicationPad2d(1), nn.ZeroPad2d((2, 0, 1, 1)), nn.ConstantPad2d(1, 0.5),
                nn.ReflectionPad1d(2), nn.CircularPad2d(1)):
        cases.append((type(pad).__name__, pad, sequence if "1d" in type(pad).__name__ else image))
    for up in (nn.Upsample(scale_factor=2), nn.Upsample(scale_factor=2, mode="bilinear"), nn.Upsample(size=(5, 11), mode="bilinear", align_corners=True),
               nn.Upsample(scale_factor=2, mode="bicubic"), nn.UpsamplingNearest2d(scale_factor=2), nn.PixelShuffle(2), nn.PixelUnshuffle(2)):
        cases.append((type(up).__name__ + "_" + str(getattr(up, "mode", "")), up, image))
    cases += [("Flatten", nn.Sequential(nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(72, 3)), image), ("Dropout", nn.Dropout(0.5), image),
              ("Unflatten", nn.Sequential(nn.Flatten(), nn.Unflatten(1, (16, 16))), image), ("ChannelShuffle", nn.ChannelShuffle(2), image),
              ("MultiheadAttention", _Attention(), (2, 5, 8)), ("TransformerEncoderLayer", nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), (2, 5, 8))]
    return cases


class _Attention(nn.Module):
    def __init__(self):
        super().__init__(); self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
    def forward(self, x): return self.attention(x, x, x, need_weights=False)[0]


CASES = layer_cases()

def run_case(module, shape, exporter):
    module.eval()
    with torch.no_grad():
        for m in module.modules():            # non-trivial running statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    try: net = AnalogNetwork.from_torch(module, x[:2], InferenceConfig.ideal(), exporter=exporter)
    except UnsupportedModelError as error:
        if "torch.onnx cannot export" in str(error): pytest.skip(f"PyTorch's {exporter} exporter cannot export it: {str(error)[:200]}")
        raise
    with torch.no_grad(): expected = module(torch.from_numpy(x)).numpy()
    got = net.predict(x)
    error = float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-30))
    assert error <= TOLERANCE, f"differs from the module by {error:.3g} of max|output|"
    return net


@pytest.mark.parametrize("name, module, shape", CASES, ids=[c[0] for c in CASES])
def test_layer_torchscript_exporter(name, module, shape):
    run_case(module, shape, "torchscript")


@pytest.mark.slow
@pytest.mark.parametrize("name, module, shape", CASES, ids=[c[0] for c in CASES])
def test_layer_dynamo_exporter(name, module, shape):
    run_case(module, shape, "dynamo")


def test_weight_layers_run_on_cores():
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                           nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = np.random.default_rng(2).normal(size=(8, 3, 8, 8)).astype(np.float32)
    config = InferenceConfig.ideal().replace(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
    net = AnalogNetwork.from_torch(module, x, config, calibration_data=x, exporter="torchscript")
    assert len(net.cores) == 3
    with torch.no_grad(): expected = module(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(net.predict(x) - expected)) > 1e-4 * np.max(np.abs(expected))
    assert module.training is False


def test_training_mode_is_restored():
    module = nn.Sequential(nn.Linear(4, 2))
    module.train()
    AnalogNetwork.from_torch(module, np.zeros((2, 4), np.float32), InferenceConfig.ideal(), exporter="torchscript")
    assert module.training


def test_without_torch(monkeypatch):
    "Without PyTorch the error says how to install it, or to pass an ONNX file."
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'") as error:
        AnalogNetwork.from_torch(object(), np.zeros((1, 3)), InferenceConfig.ideal())
    assert "from_onnx" in str(error.value)


def test_bad_arguments():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        AnalogNetwork.from_torch("model.pt", np.zeros((2, 3)), InferenceConfig.ideal())
    with pytest.raises(ValueError, match="exporter"):
        AnalogNetwork.from_torch(nn.Linear(3, 2), np.zeros((2, 3)), InferenceConfig.ideal(), exporter="onnx")
