import pickle

import numpy as np
import pytest
import torch

from explorer.core.data import DATASETS, RefusedGlobal, list_datasets, load_dataset, safe_unpickle, stratified_split
from tests.conftest import make_cifar, make_image_folder, make_mnist, png_header


def _rows(t: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in t.reshape(len(t), -1)}


def test_digits_splits_are_deterministic_disjoint_and_complete():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    for s in ("train", "val", "test"):
        assert torch.equal(a.split(s).x, b.split(s).x) and torch.equal(a.split(s).y, b.split(s).y)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    tr, va, te = _rows(a.train.x), _rows(a.val.x), _rows(a.test.x)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr) + len(va) + len(te) == 1797
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    for s in (a.train, a.val, a.test):  # stratified: every class on every side
        assert set(s.y.tolist()) == set(range(10))
    c = load_dataset("digits", seed=1)
    assert not torch.equal(a.test.y, c.test.y)


def test_digits_normalised_with_training_statistics():
    d = load_dataset("digits")
    assert abs(d.train.x.mean().item()) < 1e-4 and abs(d.train.x.std().item() - 1) < 1e-3
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64


def test_stratified_split_matches_numpy_reference():
    y = torch.tensor([0] * 10 + [1] * 20 + [2] * 4)
    keep, take = stratified_split(y, 0.25, seed=3)
    assert set(keep).isdisjoint(take) and len(keep) + len(take) == len(y)
    counts = np.bincount(y.numpy()[take])
    assert counts.tolist() == [round(0.25 * 10), round(0.25 * 20), 1]


def test_calibration_subset():
    d = load_dataset("digits")
    c = d.calibration(32, seed=0)
    assert c.shape == (32, 1, 8, 8)
    assert torch.equal(c, d.calibration(32, seed=0))
    assert _rows(c) <= _rows(d.train.x)
    with pytest.raises(ValueError, match=r"calibration samples=0 must be an integer in \[1, "):
        d.calibration(0)


def test_mnist_and_fashion_from_local_folder(tmp_path):
    make_mnist(tmp_path / "m")
    d = load_dataset("mnist", tmp_path / "m")
    assert d.input_shape == (1, 28, 28) and len(d.test) == 20 and len(d.train) + len(d.val) == 60
    make_mnist(tmp_path / "f", "FashionMNIST")
    f = load_dataset("fashion-mnist", tmp_path / "f", image_size=14)
    assert f.input_shape == (1, 14, 14) and f.classes[0] == "T-shirt/top"


def test_missing_folder_names_folder_and_expected_files(tmp_path):
    with pytest.raises(ValueError) as e:
        load_dataset("mnist", tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and "does not exist" in msg and "train-images-idx3-ubyte" in msg
    assert "t10k-labels-idx1-ubyte" in msg
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match=r"incomplete.*data_batch_1.*test_batch.*batches.meta"):
        load_dataset("cifar10", tmp_path / "c")
    with pytest.raises(ValueError, match="reads a local folder"):
        load_dataset("cifar100")


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    make_mnist(tmp_path)
    p = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"IDX file 'train-images-idx3-ubyte' holds 84 data bytes, but its header "
                                         r"\(60, 28, 28\) says 47,040"):
        load_dataset("mnist", tmp_path)


def test_cifar10_and_cifar100(tmp_path):
    make_cifar(tmp_path / "a", 10)
    d = load_dataset("cifar10", tmp_path / "a")
    assert d.input_shape == (3, 32, 32) and d.classes[:2] == ("c0", "c1") and len(d.test) == 20
    make_cifar(tmp_path / "b", 100)
    e = load_dataset("cifar100", tmp_path / "b")
    assert e.num_classes == 100 and len(e.test) == 100


def test_cifar_labels_outside_the_classes_are_refused(tmp_path):
    """A label of 60,000,000 built one class name per number up to it; a negative label went through unchecked."""
    import pickle

    for label, split, f in ((60_000_000, "training", "data_batch_3"), (-1, "test", "test_batch")):
        base = make_cifar(tmp_path / str(label), 10) / "cifar-10-batches-py"
        batch = pickle.loads((base / f).read_bytes())  # noqa: S301 (the file this test wrote)
        batch[b"labels"][1] = label
        (base / f).write_bytes(pickle.dumps(batch, protocol=2))
        with pytest.raises(ValueError, match=rf"hold the label {label} in their {split} images: cifar10 labels are "
                                             "0 to 9$"):
            load_dataset("cifar10", tmp_path / str(label))


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar_pickle_with_code_is_refused_and_runs_nothing(tmp_path):
    make_cifar(tmp_path, 10)
    marker = tmp_path / "pwned"
    evil = {b"data": _Payload(str(marker)), b"labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(evil))
    with pytest.raises(ValueError, match="refused global"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    with pytest.raises(RefusedGlobal, match="refused global io.open"):
        safe_unpickle(pickle.dumps(_Payload(str(marker))))
    assert not marker.exists()


def test_image_folder_resizes_and_skips_non_images(tmp_path):
    make_image_folder(tmp_path, per_class=6, size=12)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    d = load_dataset("imagefolder", tmp_path, image_size=16)
    assert d.input_shape == (3, 16, 16) and d.classes == ("cat", "dog", "eel")
    assert len(d.train) + len(d.val) + len(d.test) == 18
    assert any("skipped 2 file" in n for n in d.notes)
    g = load_dataset("imagefolder", tmp_path, image_size=8, channels=1)
    assert g.input_shape == (1, 8, 8)


def test_image_folder_with_train_and_test_subtrees(tmp_path):
    make_image_folder(tmp_path / "train", per_class=5)
    make_image_folder(tmp_path / "test", per_class=2, seed=1)
    d = load_dataset("imagefolder", tmp_path)
    assert len(d.test) == 6 and d.image_size == 32


def test_an_image_folder_follows_links_only_inside_itself(tmp_path):
    """The page checks the folder a visitor names against the folders it may read, but the listing followed links
    inside it: a class folder or an image linked to outside read images from anywhere, and a link to / walked
    the whole file system."""
    import os

    outside = tmp_path / "private"
    make_image_folder(outside, per_class=4, size=8, seed=2)
    tree = tmp_path / "allowed" / "mine"
    make_image_folder(tree, per_class=3, size=8)
    os.symlink(outside / "cat", tree / "secret")  # a class folder outside
    os.symlink(outside / "dog" / sorted(os.listdir(outside / "dog"))[0], tree / "dog" / "z.png")  # an image outside
    os.symlink("/", tree / "cat" / "everything")  # the whole file system
    os.symlink(tree / "cat", tree / "cat" / "again")  # a loop, inside: walked once
    (tree / "eel" / "deep").mkdir()
    os.symlink(tree / "dog" / sorted(os.listdir(tree / "dog"))[0], tree / "eel" / "deep" / "d.png")  # inside: read
    d = load_dataset("imagefolder", tree, image_size=8)
    assert d.classes == ("cat", "dog", "eel") and len(d.train) + len(d.val) + len(d.test) == 10
    note = next(n for n in d.notes if n.startswith("skipped 3 file"))
    for shown in ("secret/ (a link to outside the folder)", "dog/z.png (a link to outside the folder)",
                  "cat/everything (a link to outside the folder)"):
        assert shown in note
    test_tree = tmp_path / "split"  # the same inside a train/test tree: a test class linked to outside is not read
    make_image_folder(test_tree / "train", per_class=3, size=8)
    make_image_folder(test_tree / "test", per_class=1, size=8)
    import shutil

    shutil.rmtree(test_tree / "test" / "dog")
    os.symlink(outside / "dog", test_tree / "test" / "dog")
    assert len(load_dataset("imagefolder", test_tree, image_size=8).test) == 2


def test_bad_names_and_values_repeat_the_value():
    with pytest.raises(ValueError, match=r"dataset='svhn' must be one of: digits, mnist"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match=r"image_size=2 must be"):
        load_dataset("digits", image_size=2)
    with pytest.raises(ValueError, match=r"split='dev' must be one of"):
        load_dataset("digits").split("dev")
    assert list_datasets() == list(DATASETS)


def test_empty_image_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no readable images"):
        load_dataset("imagefolder", tmp_path)


def test_an_image_folder_is_bounded_before_anything_is_decoded(tmp_path, monkeypatch):
    """Issue 21: the caps hold for folders read from disk too (the command line, stored uploads), checked from
    the headers, so an image bomb is refused without decoding it."""
    make_image_folder(tmp_path, per_class=3, size=8)
    (tmp_path / "dog" / "bomb.png").write_bytes(png_header(20_000, 20_000))
    with pytest.raises(ValueError, match=r"^image 'dog/bomb.png' is 400,000,000 pixels, over the cap of 16,000,000 "
                                         r"pixels per image \(EXPLORER_MAX_IMAGE_PIXELS\)$"):
        load_dataset("imagefolder", tmp_path)
    (tmp_path / "dog" / "bomb.png").unlink()
    monkeypatch.setenv("EXPLORER_MAX_IMAGES", "8")
    with pytest.raises(ValueError, match=r"holds more than 8 images, over the cap of 8 \(EXPLORER_MAX_IMAGES\)"):
        load_dataset("imagefolder", tmp_path)
    monkeypatch.setenv("EXPLORER_MAX_IMAGES", "9")
    assert len(load_dataset("imagefolder", tmp_path, image_size=8).train) > 0
    # the data set the images become is bounded too: 9 images of 3x512x512 floats are 27 MiB
    monkeypatch.setenv("EXPLORER_MAX_DECODED_MB", "20")
    with pytest.raises(ValueError, match=r"9 images of 3x512x512 from image folder .* take 27 MB as a data set, over "
                                         r"the cap of 20 MB \(EXPLORER_MAX_DECODED_MB\)"):
        load_dataset("imagefolder", tmp_path, image_size=512)


def test_an_unreadable_image_folder_is_one_line(tmp_path, monkeypatch):
    """`/` on the page gave a traceback: a folder that cannot be listed is a ValueError."""
    from explorer.core import imagetree

    make_image_folder(tmp_path, per_class=2, size=8)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(imagetree.Path, "iterdir", denied)
    with pytest.raises(ValueError, match=rf"^image folder '{tmp_path}' could not be read: .*Permission denied"):
        load_dataset("imagefolder", tmp_path)


def test_mnist_like_names_are_torchvisions():
    """The folder and class names read without importing torchvision (seconds on a first page) are its own."""
    from torchvision.datasets import MNIST, FashionMNIST

    from explorer.core.data import _MNIST_LIKE

    for name, cls in (("mnist", MNIST), ("fashion-mnist", FashionMNIST)):
        assert _MNIST_LIKE[name] == (cls.__name__, tuple(cls.classes))


def test_recorded_versions_are_the_imported_libraries():
    import onnxruntime
    import timm
    import torchvision

    from explorer.models.baselines import versions

    v = versions()  # the installed distributions' versions (without a build's local tag, such as "+cpu")
    assert (v["torchvision"], v["timm"], v["onnxruntime"]) == (torchvision.__version__.split("+")[0],
                                                                 timm.__version__, onnxruntime.__version__)


def test_a_resize_is_held_to_the_decoded_cap_before_it_is_made(tmp_path, monkeypatch):
    """Issue 33: `--image-size 512` on Fashion-MNIST's 70,000 images resized them in the caller's own process, past
    8 GB, because EXPLORER_MAX_DECODED_MB was checked on the files only. What the resize would make is checked
    first, from its shape, and refused in one line that names the value."""
    from explorer.core import data

    make_mnist(tmp_path, "FashionMNIST")  # 80 images of 28x28
    made: list[int] = []
    resize = data._resize
    monkeypatch.setattr(data, "_resize", lambda x, size: made.append(size) or resize(x, size))
    monkeypatch.setenv("EXPLORER_MAX_DECODED_MB", "20")
    with pytest.raises(ValueError) as e:
        load_dataset("fashion-mnist", tmp_path, image_size=512)  # 80 x 1 x 512 x 512 x 4 bytes = 80 MB
    assert str(e.value) == ("image size 512 would make the 80 images of fashion-mnist take 80 MB, above "
                            "EXPLORER_MAX_DECODED_MB=20: choose a smaller image size (--image-size), or raise the "
                            "cap where the memory is there")
    with pytest.raises(ValueError, match=r"^image size 256 and 3 channels would make the 80 images of fashion-mnist "
                                         r"take 60 MB, above EXPLORER_MAX_DECODED_MB=20: "):
        load_dataset("fashion-mnist", tmp_path, image_size=256, channels=3)
    assert made == []  # refused before anything was resized
    assert load_dataset("fashion-mnist", tmp_path, image_size=128).input_shape == (1, 128, 128)  # 5 MB: allowed
    assert made == [128, 128]  # the training images and the official test images
