"""The IDX reader against torchvision's, on Debian's Fashion-MNIST files where they are installed and on a
fixture in the same format everywhere."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from explorer.core.data import load_dataset
from explorer.core.idx import read_idx
from tests.conftest import make_mnist

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
needs_debian = pytest.mark.skipif(not all((DEBIAN / f"{f}.gz").is_file() for f in FILES),
                                  reason="Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)")


def _torchvision(path: Path) -> torch.Tensor:
    return (read_image_file if "images" in path.name else read_label_file)(str(path))


@needs_debian
def test_reader_gives_torchvisions_tensors_on_the_debian_files(tmp_path):
    for name in FILES:
        plain = tmp_path / name
        with gzip.open(DEBIAN / f"{name}.gz", "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        ours = read_idx(DEBIAN / f"{name}.gz")
        ref = _torchvision(plain)
        assert ours.shape == tuple(ref.shape) and ours.dtype == np.uint8
        assert torch.equal(torch.from_numpy(ours), ref), name
        assert np.array_equal(read_idx(plain), ours)


@needs_debian
def test_fashion_mnist_loads_from_debians_folder_without_a_root():
    d = load_dataset("fashion-mnist")
    assert d.root == str(DEBIAN)
    assert (len(d.train), len(d.val), len(d.test)) == (51_000, 9_000, 10_000)
    assert d.input_shape == (1, 28, 28) and d.classes[0] == "T-shirt/top"


@pytest.mark.parametrize("gz", [False, True])
def test_fixture_in_fashion_mnist_format_loads_plain_or_gzipped(tmp_path, gz):
    root = make_mnist(tmp_path, cls_name="FashionMNIST", n_train=40, n_test=20, gz=gz)
    d = load_dataset("fashion-mnist", root)
    raw = root / "FashionMNIST" / "raw"
    ref = read_idx(raw / ("t10k-images-idx3-ubyte" + (".gz" if gz else "")))
    assert len(d.test) == 20 and len(d.train) + len(d.val) == 40
    # the test split is the file's images in order, normalised with the training statistics
    x = d.test.x[:, 0] * d.std[0] + d.mean[0]
    assert torch.allclose(x, torch.from_numpy(ref).float() / 255, atol=1e-5)


def test_damaged_files_are_one_line_errors(tmp_path):
    root = make_mnist(tmp_path, cls_name="FashionMNIST", n_train=40, n_test=20)
    images = root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    good = images.read_bytes()
    for data, why in ((good[:-5], r"holds 15,675 data bytes, but its header \(20, 28, 28\) says 15,680"),
                      (good + b"x", "has bytes past the end"), (b"\x00\x00\x08\x03\xff\xff\xff\xff" + good[8:],
                                                                 "more than any data set read here"),
                      (b"\x00\x00\x08\x03" + b"\xff\xff\xff\xff" * 3, "more than any data set"),  # past 2**64
                      (b"\x00\x00\x08\x03" + b"\x00" * 4 + good[8:16], r"expected N uint8 images for N labels, N at"),
                      (b"PK\x03\x04", "no IDX header")):
        images.write_bytes(data)
        with pytest.raises(ValueError, match=why):
            load_dataset("fashion-mnist", root)
    (images.parent / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip")
    images.unlink()
    with pytest.raises(ValueError, match="could not be read"):
        load_dataset("fashion-mnist", root)


def test_an_idx_data_set_over_the_decoded_cap_is_refused_from_its_header(tmp_path, monkeypatch):
    """A gzipped IDX file of zeros expands about a thousand times: 640,000 images took 0.5 MB on disk and 2 GB as
    a data set. The cap on decoded images holds for IDX files too, judged from the header before any data is read."""
    import gzip

    root = make_mnist(tmp_path, cls_name="FashionMNIST", n_train=40, n_test=20, gz=True)
    images = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    with gzip.open(images, "wb") as f:  # a header for 640,000 images and no data: refused before reading any
        f.write(b"\x00\x00\x08\x03" + (640_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
    with pytest.raises(ValueError, match=r"^IDX file 'train-images-idx3-ubyte.gz' declares \(640000, 28, 28\): 1,914 "
                                         r"MB as a data set, over the cap of 1,024 MB \(EXPLORER_MAX_DECODED_MB\)$"):
        load_dataset("fashion-mnist", root)
    monkeypatch.setenv("EXPLORER_MAX_DECODED_MB", "0.1")  # 40 images of 28x28 as floats take 0.12 MB
    fresh = make_mnist(tmp_path / "b", cls_name="FashionMNIST", n_train=40, n_test=20, gz=True)
    with pytest.raises(ValueError, match=r"over the cap of 0.1 MB \(EXPLORER"):
        load_dataset("fashion-mnist", fresh)
