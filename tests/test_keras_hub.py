"""keras_hub backbones built from their constructors (random weights, no downloads) through the traced import
(33_keras_hub): ideal configuration = Keras `predict`, every projection on cores with 8-bit hardware, BERT's padding
mask honoured, layers that cannot be mapped refused before any work."""
import dataclasses, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from collections import Counter
import numpy as np
import pytest
import keras

keras_hub = pytest.importorskip("keras_hub")
from crosssim_nb.config import InferenceConfig
from crosssim_nb.keras_import import UnsupportedLayerError, build_graph
from crosssim_nb.network import AnalogNetwork

VOCABULARY, LENGTH = 40, 12
EIGHT_BIT = dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")

@pytest.fixture(scope="module")
def bert():
    keras.utils.set_random_seed(1)
    return keras_hub.models.BertBackbone(vocabulary_size=VOCABULARY, num_layers=2, num_heads=2, hidden_dim=32,
                                         intermediate_dim=64, max_sequence_length=16)

@pytest.fixture(scope="module")
def vit():
    keras.utils.set_random_seed(2)
    return keras_hub.models.ViTBackbone(image_shape=(28, 28, 1), patch_size=7, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)

def bert_inputs(count:int, seed:int=0) -> dict:
    "Token and segment ids with a padding mask: sequence i holds its first `lengths[i]` tokens (at least 3), the rest is padding."
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, LENGTH + 1, (count, 1))
    return {"token_ids": rng.integers(1, VOCABULARY, (count, LENGTH)), "segment_ids": rng.integers(0, 2, (count, LENGTH)),
            "padding_mask": (np.arange(LENGTH)[None] < lengths).astype("int32")}

def images(count:int, seed:int=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 28, 28, 1)).astype(np.float32)

def kernels(model) -> int:
    "Weight matrices of the model (Dense, EinsumDense and convolution kernels; embedding tables are not kernels)."
    return sum(v.path.endswith("/kernel") for v in model.weights)

def relative_error(got, reference) -> float:
    return float(np.abs(np.asarray(got) - reference).max() / np.abs(reference).max())

def test_bert_ideal_equals_keras(bert):
    x = bert_inputs(6)
    reference = bert.predict(x, verbose=0)                        # {"pooled_output", "sequence_output"}
    net = AnalogNetwork.from_keras(bert, InferenceConfig.ideal())
    assert net.graph.inputs == [t.name for t in bert.inputs] == ["padding_mask", "segment_ids", "token_ids"]
    by_dict = net.predict(x)                                      # a list in the order of the model's outputs
    names = sorted(reference)                                     # (Keras flattens the output dict by key)
    assert [o.shape for o in by_dict] == [reference[k].shape for k in names]
    for got, name in zip(by_dict, names):
        assert relative_error(got, reference[name]) < 1e-4, name
    by_list = net.predict([x[name] for name in net.graph.inputs])
    for a, b in zip(by_dict, by_list): np.testing.assert_array_equal(a, b)

@pytest.mark.parametrize("products", ["digital", "analog"])
def test_vit_ideal_equals_keras(vit, products):
    x = images(5)
    config = dataclasses.replace(InferenceConfig.ideal(), attention_products=products)   # read inside the traced encoder blocks
    net = AnalogNetwork.from_keras(vit, config)
    assert relative_error(net.predict(x), vit.predict(x, verbose=0)) < 1e-4

def test_overrides_reach_traced_sublayers(bert):
    x = bert_inputs(4, seed=6)
    kept = "transformer_layer_1/feedforward_output_dense"     # a Dense inside a traced TransformerEncoder
    net = AnalogNetwork.from_keras(bert, InferenceConfig(**EIGHT_BIT), calibration_data=x,
                                   layer_overrides={kept: "digital", "pooled_dense": {"adc_bits": 10}})
    assert kept not in net.cores and len(net.cores) == kernels(bert) - 1
    assert net.cores["pooled_dense"].config.adc_bits == 10 and net.cores["transformer_layer_0/feedforward_output_dense"].config.adc_bits == 8

def reads_per_core(net, x) -> Counter:
    "How often each core is read in one pass over `x` (the executor's observer sees every core input)."
    reads = Counter()
    net.run(x, observer=lambda name, tensor: reads.update([name]))
    return reads

@pytest.mark.parametrize("which", ["bert", "vit"])
def test_eight_bit_every_projection_on_cores(which, bert, vit):
    model, x = (bert, bert_inputs(8, seed=3)) if which == "bert" else (vit, images(8, seed=3))
    net = AnalogNetwork.from_keras(model, InferenceConfig(**EIGHT_BIT), calibration_data=x)
    table = net.hw_config()
    cores = table[table.layer != "total"]
    assert len(cores) == len(net.cores) == kernels(model) == 13    # 2 × (Q, K, V, output, 2 MLP) + pooler / patch conv
    assert set(cores.weight_bits) == set(cores.adc_bits) == {8}
    if which == "vit":                                           # 16 patches of 7×7 pixels; 17 tokens with the class token
        assert list(cores.mvms_per_image) == [16] + [17] * 12
    reads = reads_per_core(net, x)
    assert set(reads) == set(net.cores) and min(reads.values()) >= 1
    reference = model.predict(x, verbose=0)
    reference = reference["sequence_output"] if which == "bert" else reference
    def error(config):
        got = AnalogNetwork.from_keras(model, config, calibration_data=x).predict(x)
        return relative_error(got[1] if which == "bert" else got, reference)
    assert error(InferenceConfig.ideal()) < 1e-4
    assert error(InferenceConfig(**EIGHT_BIT)) > 1e-3                   # the quantised cores change the result ...
    assert 1e-4 < error(InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0)) < 0.1   # ... and 8-bit weights and inputs alone by a few %

@pytest.mark.parametrize("config", [InferenceConfig.ideal(), InferenceConfig(**EIGHT_BIT)], ids=["ideal", "8-bit"])
def test_padding_mask_honoured(bert, config):
    x = bert_inputs(6, seed=4)
    changed = {k: v.copy() for k, v in x.items()}
    padded = x["padding_mask"] == 0
    assert padded.any()
    changed["token_ids"][padded] = (changed["token_ids"][padded] + 7) % VOCABULARY
    changed["segment_ids"][padded] = 1 - changed["segment_ids"][padded]
    keras_before, keras_after = bert.predict(x, verbose=0), bert.predict(changed, verbose=0)
    kept = ~padded
    scale = np.abs(keras_before["sequence_output"]).max()
    assert np.abs(keras_before["sequence_output"][kept] - keras_after["sequence_output"][kept]).max() < 1e-5 * scale   # Keras: unchanged
    assert np.abs(keras_before["sequence_output"][padded] - keras_after["sequence_output"][padded]).max() > 1e-2 * scale
    net = AnalogNetwork.from_keras(bert, config, calibration_data=x if config.dac_bits else None)
    (pooled_before, before), (pooled_after, after) = net.predict(x), net.predict(changed)
    assert np.abs(before[kept] - after[kept]).max() < 1e-5 * scale
    assert np.abs(pooled_before - pooled_after).max() < 1e-5 * np.abs(pooled_before).max()
    assert np.abs(before[padded] - after[padded]).max() > 1e-2 * scale

def test_untraceable_layer_refused_before_work():
    inp = keras.Input((6, 8), name="x")
    decoded = keras_hub.layers.TransformerDecoder(intermediate_dim=16, num_heads=2, name="decoder")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(decoded))
    with pytest.raises(UnsupportedLayerError) as error:        # calibration data of the wrong shape: never looked at
        AnalogNetwork.from_keras(model, InferenceConfig(**EIGHT_BIT), calibration_data=np.zeros((2, 99), np.float32))
    text = str(error.value)
    assert "layer 'decoder' of type 'TransformerDecoder'" in text and "cannot be traced" in text
    assert 'layer_overrides={"decoder": "digital"}' in text
    net = AnalogNetwork.from_keras(model, InferenceConfig.ideal(), layer_overrides={"decoder": "digital"})
    x = np.random.default_rng(5).normal(size=(4, 6, 8)).astype(np.float32)
    assert relative_error(net.predict(x), model.predict(x, verbose=0)) < 1e-4
    assert list(net.cores) == ["head"]

def test_weight_product_refused():
    inp = keras.Input((6, 8), name="x")
    head = keras_hub.layers.MaskedLMHead(vocabulary_size=20, activation="softmax", name="lm_head")
    model = keras.Model(inp, head(inp, mask_positions=keras.ops.zeros((1, 2), "int32")))
    with pytest.raises(UnsupportedLayerError, match=r"layer 'lm_head' of type 'MaskedLMHead': keras.ops.matmul multiplies an "
                                                    r"activation by its own weights \(lm_head/output_kernel\)"):
        build_graph(model)

def test_reverse_embedding_refused():
    inp = keras.Input((5,), dtype="int32", name="ids")
    table = keras.layers.ReversibleEmbedding(20, 8, name="table")
    model = keras.Model(inp, table(table(inp), reverse=True))
    with pytest.raises(UnsupportedLayerError, match="layer 'table' of type 'ReversibleEmbedding' is called with reverse=True"):
        build_graph(model)

def test_keras_mask_into_traced_layer_refused():
    ids = keras.Input((6,), dtype="int32", name="ids")
    masked = keras.layers.Embedding(20, 8, mask_zero=True, name="table")(ids)     # TransformerEncoder reads this mask itself
    model = keras.Model(ids, keras_hub.layers.TransformerEncoder(16, 2, name="encoder")(masked))
    with pytest.raises(UnsupportedLayerError, match="layer 'encoder' of type 'TransformerEncoder' reads a Keras mask"):
        build_graph(model)

@pytest.mark.parametrize("embedding", ["digital", "analog"])
def test_keras_hub_layers_in_a_functional_model(embedding):
    "A classifier of the keras_hub tutorials' shape: token and position embedding, an encoder, an FNet block, pooling, a head."
    keras.utils.set_random_seed(3)
    ids = keras.Input((10,), dtype="int32", name="ids")
    x = keras_hub.layers.TokenAndPositionEmbedding(VOCABULARY, 10, 16, name="embed")(ids)
    x = keras_hub.layers.TransformerEncoder(32, 2, name="encoder")(x)
    x = keras_hub.layers.FNetEncoder(32, name="fnet")(x)
    model = keras.Model(ids, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D(name="pool")(x)))
    x = np.random.default_rng(7).integers(0, VOCABULARY, (6, 10))
    config = dataclasses.replace(InferenceConfig.ideal(), embedding=embedding)
    net = AnalogNetwork.from_keras(model, config)
    assert relative_error(net.predict(x), model.predict(x, verbose=0)) < 1e-4
    tables = {"embed/token_embedding"} if embedding == "analog" else set()   # the position table is added, never a lookup
    assert set(net.cores) == {"encoder/self_attention_layer/" + p for p in ("query", "key", "value", "attention_output")} | {
        "encoder/feedforward_intermediate_dense", "encoder/feedforward_output_dense", "fnet/intermediate_dense", "fnet/output_dense",
        "head"} | tables

def test_task_model_with_nested_backbone(bert):
    "A keras_hub task model (no preprocessor) holds the backbone as a nested model: its cores are named 'bert_backbone/...'."
    classifier = keras_hub.models.BertTextClassifier(backbone=bert, num_classes=3, preprocessor=None)
    x = bert_inputs(4, seed=8)
    net = AnalogNetwork.from_keras(classifier, InferenceConfig.ideal())
    assert len(net.cores) == kernels(classifier) == 14 and "bert_backbone/pooled_dense" in net.cores
    assert relative_error(net.predict(x), classifier.predict(x, verbose=0)) < 1e-4

def test_read_noise_independent_of_batch_size(vit):
    "Read noise inside the traced encoder blocks is keyed per image and read: the same for any batch size, and there."
    x = images(12, seed=9)
    noisy = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0, noise_model="generic", alpha_noise=0.02)
    net = AnalogNetwork.from_keras(vit, noisy, calibration_data=x)
    whole, pieces = net.predict(x, batch_size=12), net.predict(x, batch_size=5)
    scale = np.abs(whole).max()
    assert np.abs(whole - pieces).max() < 1e-5 * scale
    quiet = AnalogNetwork.from_keras(vit, dataclasses.replace(noisy, noise_model="none", alpha_noise=0.0), calibration_data=x)
    assert np.abs(whole - quiet.predict(x)).max() > 1e-3 * scale

def test_adc_calibration_with_dict_inputs(bert):
    "calibrate_adc profiles BERT's dict inputs; the calibrated 8-bit ADCs lose less than full-scale (MAX) ones."
    from crosssim_nb.calibration import calibrate_adc
    calibration, test = bert_inputs(32, seed=10), bert_inputs(8, seed=11)
    reference = bert.predict(test, verbose=0)["sequence_output"]
    full_scale = AnalogNetwork.from_keras(bert, InferenceConfig(**EIGHT_BIT), calibration_data=calibration)
    limits = calibrate_adc(full_scale, calibration)
    assert set(limits.adc_limits) == set(full_scale.cores)
    calibrated = AnalogNetwork.from_keras(bert, InferenceConfig(**(EIGHT_BIT | dict(adc_range_option="CALIBRATED"))),
                                          calibration_data=calibration, adc_limits=limits)
    assert relative_error(calibrated.predict(test)[1], reference) < relative_error(full_scale.predict(test)[1], reference)
