"""Dataset loaders (crosssim_nb.data): shapes, dtypes, label ranges, selection, formats, sample fallback, errors.

Independent references: the published class counts of the MNIST / Fashion-MNIST test sets, the well-known first
labels of each test set, the foolbox sample PNGs (which are the first 20 test images, decoded by PIL rather than
our idx parser), and synthetic CIFAR / ImageNet folders built here with known content.
"""
import gzip
import json
import os
import pickle
import tarfile
import warnings

import numpy as np
import pytest

from crosssim_nb.data import (DATASETS, Dataset, SampleDataWarning, list_datasets, load_dataset, read_cifar_batch,
                              read_idx, sample_folder)

MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
FASHION_FIRST_TEST_LABELS = [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
CIFAR10_FIRST_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]


def _require(name):
    try:
        load_dataset(name, ntest=1)
    except FileNotFoundError as error:
        pytest.skip(f"{name} is not installed (run scripts/get_data.sh): {str(error).splitlines()[0]}")


needs_samples = pytest.mark.skipif(sample_folder() is None, reason="foolbox sample images not installed "
                                   "(pip install --no-deps foolbox)")


@pytest.fixture
def no_full_copies(tmp_path, monkeypatch):
    "Hide any real CIFAR/ImageNet copy: empty data root and Keras home, no dataset variables."
    monkeypatch.setenv("CROSSSIM_NB_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    for info in DATASETS.values():
        monkeypatch.delenv(info["env"], raising=False)
    return tmp_path


# --- MNIST / Fashion-MNIST -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_full_splits_shapes_dtypes_labels(name):
    _require(name)
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = load_dataset(name, split=split)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert y.min() == 0 and y.max() == 9
        assert x.max() == 255 and x.min() == 0
    counts = np.bincount(load_dataset(name).y, minlength=10)
    expected = MNIST_TEST_CLASS_COUNTS if name == "mnist" else [1000] * 10
    assert counts.tolist() == expected
    first = MNIST_FIRST_TEST_LABELS if name == "mnist" else FASHION_FIRST_TEST_LABELS
    assert load_dataset(name, ntest=10).y.tolist() == first


@needs_samples
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_images_equal_the_foolbox_pngs(name):
    "foolbox's 20 sample PNGs are the first 20 test images: decoding idx and PNG must agree pixel for pixel."
    _require(name)
    full = load_dataset(name, ntest=20)
    sample = load_dataset(name, sample=True)
    assert sample.is_sample and not full.is_sample
    np.testing.assert_array_equal(sample.y, full.y)
    np.testing.assert_array_equal(sample.x, full.x)


def test_selection_ntest_nstart_random():
    _require("fashion_mnist")
    full_x, full_y = load_dataset("fashion_mnist")
    part = load_dataset("fashion_mnist", ntest=300, nstart=1234)
    np.testing.assert_array_equal(part.x, full_x[1234:1534])
    np.testing.assert_array_equal(part.y, full_y[1234:1534])
    np.testing.assert_array_equal(part.indices, np.arange(1234, 1534))
    tail = load_dataset("fashion_mnist", nstart=9990)
    assert len(tail.y) == 10
    drawn = load_dataset("fashion_mnist", ntest=500, nstart=100, random_sampling=True, seed=7)
    assert len(np.unique(drawn.indices)) == 500 and np.all(np.diff(drawn.indices) > 0)
    assert drawn.indices.min() >= 100 and drawn.indices.max() < 10000
    np.testing.assert_array_equal(drawn.x, full_x[drawn.indices])
    np.testing.assert_array_equal(drawn.y, full_y[drawn.indices])
    again = load_dataset("fashion_mnist", ntest=500, nstart=100, random_sampling=True, seed=7)
    other = load_dataset("fashion_mnist", ntest=500, nstart=100, random_sampling=True, seed=8)
    np.testing.assert_array_equal(again.indices, drawn.indices)
    assert not np.array_equal(other.indices, drawn.indices)
    assert drawn.indices.max() - drawn.indices.min() > 5000  # spread over the split, not a block


def test_returned_arrays_are_private_copies():
    _require("mnist")
    x, _ = load_dataset("mnist", ntest=5)
    x[:] = 0
    assert load_dataset("mnist", ntest=5).x.any()


def test_bad_arguments():
    _require("mnist")
    with pytest.raises(ValueError, match="ntest=10001"):
        load_dataset("mnist", ntest=10001)
    with pytest.raises(ValueError, match="nstart=10000"):
        load_dataset("mnist", nstart=10000)
    with pytest.raises(ValueError, match="nstart must be a non-negative integer"):
        load_dataset("mnist", nstart=-1)
    with pytest.raises(ValueError, match="ntest must be a positive integer"):
        load_dataset("mnist", ntest=0)
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("mnist", split="dev")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; available: cifar10, cifar100, fashion_mnist"):
        load_dataset("svhn")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet"])
def test_missing_data_error_says_where_and_how(name, tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset(name, path=tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "looked in" in message and "To get it:" in message
    assert {"mnist": "get_data.sh", "fashion_mnist": "dataset-fashion-mnist", "cifar10": "cifar-10-python.tar.gz",
            "cifar100": "cifar-100-python.tar.gz", "imagenet": "labels file"}[name] in message


def test_env_variable_pointing_nowhere_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSSIM_NB_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="CROSSSIM_NB_FASHION_MNIST"):
        load_dataset("fashion_mnist")


def test_idx_folder_from_path_and_env(tmp_path, monkeypatch):
    "A user's own idx folder (gzipped, dotted names) is found through path= and the environment variable."
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 12).astype(np.uint8)
    (tmp_path / "t10k-images.idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3]) + np.array([12, 28, 28], ">u4").tobytes() + images.tobytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(bytes([0, 0, 8, 1]) + np.array([12], ">u4").tobytes() + labels.tobytes()))
    x, y = load_dataset("mnist", path=tmp_path, ntest=5, nstart=3)
    np.testing.assert_array_equal(x, images[3:8]); np.testing.assert_array_equal(y, labels[3:8])
    monkeypatch.setenv("CROSSSIM_NB_MNIST", str(tmp_path))
    np.testing.assert_array_equal(load_dataset("mnist").x, images)
    with pytest.raises(FileNotFoundError, match="train split"):
        load_dataset("mnist", split="train")


def test_keras_mnist_npz(tmp_path):
    x_test = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28)
    np.savez(tmp_path / "mnist.npz", x_train=x_test, y_train=np.arange(4), x_test=x_test[::-1], y_test=np.arange(4)[::-1])
    ds = load_dataset("mnist", path=tmp_path / "mnist.npz")
    np.testing.assert_array_equal(ds.x, x_test[::-1]); assert ds.y.tolist() == [3, 2, 1, 0] and ds.y.dtype == np.int64


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + np.array([2, 28, 28], ">u4").tobytes() + b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "bad")


# --- CIFAR -----------------------------------------------------------------------------------------------------

def _write_batch(path, images, labels, label_key="labels", protocol=2):
    "Write a CIFAR-format batch (test fixture: the format is a pickle) from channel-last images."
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    content = {b"batch_label": b"test", label_key.encode(): list(map(int, labels)), b"data": rows,
               b"filenames": [b"%d.png" % i for i in range(len(images))]}
    if label_key == "fine_labels":
        content[b"coarse_labels"] = [int(label) // 5 for label in labels]
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=protocol)


@pytest.fixture
def fake_cifar10(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 7)
        _write_batch(folder / name, images, labels)
        parts[name] = (images, labels)
    return tmp_path, parts


def test_cifar10_folder_parent_and_tarball(fake_cifar10, monkeypatch):
    root, parts = fake_cifar10
    test_images, test_labels = parts["test_batch"]
    for place in (root / "cifar-10-batches-py", root):
        x, y = load_dataset("cifar10", path=place)
        assert x.shape == (7, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
        np.testing.assert_array_equal(x, test_images); np.testing.assert_array_equal(y, test_labels)
    train = load_dataset("cifar10", split="train", path=root)
    assert train.x.shape == (35, 32, 32, 3) and not train.is_sample
    np.testing.assert_array_equal(train.x[7:14], parts["data_batch_2"][0])
    np.testing.assert_array_equal(train.y[28:], parts["data_batch_5"][1])
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_archive = load_dataset("cifar10", path=root / "cifar-10-python.tar.gz", ntest=3, nstart=2)
    np.testing.assert_array_equal(from_archive.x, test_images[2:5])
    monkeypatch.setenv("CROSSSIM_NB_CIFAR10", str(root))
    np.testing.assert_array_equal(load_dataset("cifar10").y, test_labels)


def test_cifar10_keras_cache_layout(fake_cifar10, monkeypatch, tmp_path_factory):
    "Keras 3 extracts to ~/.keras/datasets/cifar-10-batches-py-target/cifar-10-batches-py."
    root, parts = fake_cifar10
    home = tmp_path_factory.mktemp("keras_home")
    (home / "datasets" / "cifar-10-batches-py-target").mkdir(parents=True)
    (root / "cifar-10-batches-py").rename(home / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py")
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("CROSSSIM_NB_DATA", raising=False)
    monkeypatch.delenv("CROSSSIM_NB_CIFAR10", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampleDataWarning)
        ds = load_dataset("cifar10")
    assert not ds.is_sample
    np.testing.assert_array_equal(ds.x, parts["test_batch"][0])


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images, labels = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, 9)
    _write_batch(folder / "test", images, labels, "fine_labels", protocol=4)
    x, y = load_dataset("cifar100", path=tmp_path)
    np.testing.assert_array_equal(x, images); np.testing.assert_array_equal(y, labels)
    assert 0 <= y.min() and y.max() < 100


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_dataset("cifar10", path=folder)
    assert not marker.exists()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="not a CIFAR batch file"):
        read_cifar_batch(folder / "test_batch")


@needs_samples
def test_cifar_sample_fallback(no_full_copies):
    with pytest.warns(SampleDataWarning, match="20-image sample from foolbox"):
        ds = load_dataset("cifar10", ntest=1000)
    x, y = ds
    assert ds.is_sample and "SAMPLE" in repr(ds)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert y.tolist() == CIFAR10_FIRST_TEST_LABELS
    with pytest.warns(SampleDataWarning):
        c100 = load_dataset("cifar100", ntest=5, nstart=10)
    assert c100.x.shape == (5, 32, 32, 3) and c100.y.max() < 100 and c100.indices.tolist() == [10, 11, 12, 13, 14]
    with pytest.raises(FileNotFoundError, match="no training split"):
        load_dataset("cifar10", split="train")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset("cifar10", sample=False)


# --- ImageNet --------------------------------------------------------------------------------------------------

@needs_samples
def test_imagenet_sample(no_full_copies):
    with pytest.warns(SampleDataWarning):
        ds = load_dataset("imagenet")
    assert ds.x.shape == (20, 224, 224, 3) and ds.x.dtype == np.uint8 and ds.is_sample
    names = sorted(p.name for p in sample_folder().glob("imagenet_*"))
    assert ds.y.tolist() == [int(n.split("_")[2].split(".")[0]) for n in names]
    assert 0 <= ds.y.min() and ds.y.max() < 1000
    small = load_dataset("imagenet", sample=True, ntest=2, image_size=64)
    assert small.x.shape == (2, 64, 64, 3)


def _image(path, value, size=(40, 30)):
    from PIL import Image
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_imagenet_labels_file_with_indices(tmp_path):
    values = [10, 60, 110, 160]
    for i, v in enumerate(values):
        _image(tmp_path / f"ILSVRC2012_val_{i + 1:08d}.JPEG", v)
    (tmp_path / "val.txt").write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {label}\n"
                                              for i, label in enumerate([65, 970, 230, 809])))
    ds = load_dataset("imagenet", path=tmp_path, image_size=32, ntest=3, nstart=1)
    assert ds.x.shape == (3, 32, 32, 3) and ds.y.tolist() == [970, 230, 809]
    np.testing.assert_allclose(ds.x.reshape(3, -1).mean(1), values[1:], atol=8)  # JPEG is lossy


def test_imagenet_wnid_folders_and_kaggle_csv(tmp_path):
    "WordNet ids map through Keras' imagenet_class_index.json (a 3-class stand-in here)."
    classes = {"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"], "2": ["n01484850", "great_white_shark"]}
    val = tmp_path / "val"
    for wnid, count in (("n01443537", 2), ("n01484850", 1)):
        (val / wnid).mkdir(parents=True)
        for k in range(count):
            _image(val / wnid / f"img{k}.png", 50)
    with pytest.raises(ValueError, match="imagenet_class_index.json"):
        load_dataset("imagenet", path=tmp_path)
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(classes))
    ds = load_dataset("imagenet", path=tmp_path, image_size=16)
    assert ds.y.tolist() == [1, 1, 2] and ds.x.shape == (3, 16, 16, 3)
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(3):
        _image(flat / f"ILSVRC2012_val_{k:08d}.JPEG", 90)
    (flat / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000000,n01484850 1 2 3 4 n01484850 5 6 7 8\n"
        "ILSVRC2012_val_00000001,n01440764 1 2 3 4\nILSVRC2012_val_00000002,n01443537 1 2 3 4\n")
    (flat / "imagenet_class_index.json").write_text(json.dumps(classes))
    assert load_dataset("imagenet", path=flat, image_size=16).y.tolist() == [2, 0, 1]


def test_imagenet_ilsvrc_ground_truth_with_devkit_meta(tmp_path):
    "ILSVRC2012 ids (1-based, devkit order) translate to Keras indices (sorted WordNet ids) via meta.mat."
    scipy_io = pytest.importorskip("scipy.io")
    wnids = [f"n{10000000 + 7 * k:08d}" for k in range(1000)]
    ilsvrc_order = np.random.default_rng(3).permutation(1000)  # devkit id k+1 -> wnids[ilsvrc_order[k]]
    synsets = np.zeros(1001, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for k in range(1000):
        synsets[k] = (k + 1, wnids[ilsvrc_order[k]], 0)
    synsets[1000] = (1001, "n99999999", 5)  # an inner node, not a class
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    scipy_io.savemat(devkit / "meta.mat", {"synsets": synsets})
    ids = [5, 1, 1000]
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    images = tmp_path / "val"
    images.mkdir()
    for k in range(3):
        _image(images / f"ILSVRC2012_val_{k + 1:08d}.JPEG", 120)
    # the labels file is passed as path; its images are looked up under its folder, so put them there
    for p in images.iterdir():
        p.rename(devkit / p.name)
    ds = load_dataset("imagenet", path=devkit / "ILSVRC2012_validation_ground_truth.txt", image_size=16)
    assert ds.y.tolist() == [int(ilsvrc_order[i - 1]) for i in ids]  # sorted order of wnids is their index


def test_imagenet_labels_file_errors(tmp_path):
    _image(tmp_path / "a.png", 0)
    (tmp_path / "labels.txt").write_text("a.png 3\nb.png 4\n")
    with pytest.raises(FileNotFoundError, match="1 of its 2 images"):
        load_dataset("imagenet", path=tmp_path)
    (tmp_path / "labels.txt").write_text("a.png 3\na.png cat\n")
    with pytest.raises(ValueError, match="neither a class index nor a WordNet id"):
        load_dataset("imagenet", path=tmp_path)
    (tmp_path / "labels.txt").write_text("a.png 1000\n")
    with pytest.raises(ValueError, match="0..999"):
        load_dataset("imagenet", path=tmp_path)


# --- the table ----------------------------------------------------------------------------------------------

def test_list_datasets(no_full_copies, fake_cifar10, monkeypatch):
    table = list_datasets()
    assert list(table.index) == list(DATASETS)
    assert table.loc["cifar100", "classes"] == 100
    if sample_folder() is not None:
        assert table.loc["cifar10", "status"] == "sample (20 images)"
    assert isinstance(Dataset(np.zeros((1, 2)), np.zeros(1), "x", "test", "."), tuple)
    # a full copy named by the dataset's variable is reported with the folder that holds its test batch
    root, _ = fake_cifar10
    monkeypatch.setenv("CROSSSIM_NB_CIFAR10", str(root))
    table = list_datasets()
    assert table.loc["cifar10", "status"] == "full"
    assert table.loc["cifar10", "source"] == str(root / "cifar-10-batches-py")
    assert table.loc["cifar100", "status"] != "full"  # the variable is CIFAR-10's only
