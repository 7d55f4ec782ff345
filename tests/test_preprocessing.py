"""What a model is fed, checked and said: the mean, std and image size a user gives are refused in one line where they
cannot be right, and the words say exactly what the explorer feeds (issue 35: nothing said it)."""

import math

import pytest
import torch

from explorer.core import preprocessing as pre
from explorer.core.data import load_dataset


@pytest.mark.parametrize("mean,std,channels,said", [
    ((0.5,), (0.0,), None, "std 0 must be above 0 in every channel (a std of 0 divides by zero)"),
    ((0.5,), None, None, "the mean is given without the std: give both"),
    (None, (0.5,), None, "the std is given without the mean: give both"),
    ((0.5, 0.5), (0.5, 0.5), None, "mean 0.5, 0.5 has 2 values: give one per channel, 1 for grey images or 3 for "
                                   "colour"),
    ((0.5,), (0.5, 0.5, 0.5), None, "mean 0.5 and std 0.5, 0.5, 0.5 have 1 and 3 values"),
    ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 1, "have 3 values each, but the images have 1 channel: give one per channel"),
    ((math.nan,), (1.0,), None, "mean nan holds nan: each value must be a finite number"),
    ((0.5,), (-1.0,), None, "std -1 must be above 0 in every channel"),
])
def test_a_mean_or_std_that_cannot_be_right_is_refused_in_one_line(mean, std, channels, said):
    with pytest.raises(ValueError) as e:
        pre.check_normalisation(mean, std, channels)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_typed_values_are_read_as_a_person_writes_them():
    assert pre.parse_values(" 0.485, 0.456 ,0.406 ", "mean") == (0.485, 0.456, 0.406)
    assert pre.parse_values("0 ", "mean") == (0.0,) and pre.parse_values("  ", "mean") is None
    with pytest.raises(ValueError, match=r"mean '0.5, x' must be numbers separated by commas, one per channel"):
        pre.parse_values("0.5, x", "mean")
    with pytest.raises(ValueError, match=r"image size=3 must be an integer in \[4, 512\]"):
        pre.given(image_size=3)


def test_the_words_say_what_the_loader_feeds():
    data = load_dataset("digits")
    words = pre.feed_words(data.input_shape, data.mean, data.std)
    assert words == "images of 1x8x8, scaled to [0, 1], then (x - 0.3056) / 0.3763"
    assert pre.feed_words((1, 8, 8), (0.0,), (1.0,)) == "images of 1x8x8, scaled to [0, 1], as they are (mean 0, std 1)"
    assert pre.feed_words((3, 32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) == \
        "images of 3x32x32, scaled to [0, 1], then (x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225) per channel"


def test_a_given_mean_and_std_are_what_the_data_is_normalised_with():
    own = load_dataset("digits")
    raw = load_dataset("digits", mean=(0.0,), std=(1.0,))
    assert raw.mean == (0.0,) and raw.std == (1.0,)
    # the same images: the default split is the [0, 1] pixels normalised with the training split's own statistics
    torch.testing.assert_close(raw.test.x, own.test.x * own.std[0] + own.mean[0])
    assert 0.0 <= float(raw.test.x.min()) and float(raw.test.x.max()) <= 1.0
    with pytest.raises(ValueError, match="have 3 values each, but the images have 1 channel"):
        load_dataset("digits", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
