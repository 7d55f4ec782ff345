import numpy as np
import pytest
import torch

from explorer.core.data import Split, load_dataset
from explorer.core.train import TrainConfig, TrainHook, evaluate, fit, predict_logits, seed_everything, topk_accuracy
from explorer.core.zoo import create_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train(digits, epochs=8, hooks=(), progress=None):
    seed_everything(0)
    m = create_model("digits_cnn")
    fit(m, digits.train, TrainConfig(epochs=epochs, seed=0), hooks=hooks, progress=progress)
    return m


def test_short_training_passes_90_percent(digits):
    m = _train(digits)
    assert evaluate(m, digits.test)["top1"] > 90.0


def test_training_is_deterministic_for_a_seed(digits):
    a, b = _train(digits, epochs=2), _train(digits, epochs=2)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_hooks_and_progress_are_called(digits):
    calls = {"backward": 0, "step": 0, "last": None}

    class Count(TrainHook):
        def after_backward(self, model):
            calls["backward"] += 1

        def after_step(self, model, step, total):
            calls["step"] += 1
            calls["last"] = (step, total)

    seen = []
    _train(digits, epochs=1, hooks=[Count()], progress=lambda f, msg: seen.append(f))
    steps = -(-len(digits.train) // 64)
    assert calls["backward"] == calls["step"] == steps and calls["last"] == (steps, steps)
    assert seen[-1] == pytest.approx(1.0) and all(0 < f <= 1 for f in seen)


def test_hook_keeps_a_weight_frozen(digits):
    class Freeze(TrainHook):
        def after_step(self, model, step, total):
            with torch.no_grad():
                model.features[0].weight[0].zero_()

    m = _train(digits, epochs=1, hooks=[Freeze()])
    assert torch.count_nonzero(m.features[0].weight[0]) == 0


def test_topk_matches_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    got = topk_accuracy(torch.from_numpy(logits), torch.from_numpy(y))
    for k in (1, 3, 5):
        ref = np.mean([y[i] in np.argsort(-logits[i])[:k] for i in range(200)]) * 100
        assert got[f"top{k}"] == pytest.approx(ref)


def test_topk_capped_at_class_count():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert topk_accuracy(logits, torch.tensor([0, 0]))["top5"] == 100.0


def test_invalid_train_config_and_empty_split():
    with pytest.raises(ValueError, match=r"epochs=-1 must be an integer"):
        TrainConfig(epochs=-1)
    with pytest.raises(ValueError, match=r"optimizer='rmsprop' must be one of: adam, sgd"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="empty"):
        evaluate(create_model("digits_cnn"), Split(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long)))


@pytest.mark.parametrize("name", ["digits_cnn", "resnet8"])
def test_scoring_batches_side_by_side_gives_the_same_logits_bit_for_bit(digits, name):
    """Test images scored in several threads: each batch is the computation one thread does, in order, so
    the figures cannot depend on the count (it is not part of a run's key)."""
    seed_everything(0)
    m = create_model(name)
    fit(m, digits.train, TrainConfig(epochs=1, seed=0))  # BatchNorm's running statistics away from 0 and 1
    one = predict_logits(m, digits.test.x, batch_size=64)
    assert len(digits.test) % 64 and len(digits.test) // 64 >= 3  # several batches and a short last one
    for workers in (2, 3, 16):
        got = predict_logits(m, digits.test.x, batch_size=64, workers=workers)
        assert torch.equal(got, one) and not got.requires_grad
    a = evaluate(m, digits.test, batch_size=64, with_predictions=True)
    b = evaluate(m, digits.test, batch_size=64, with_predictions=True, workers=2)
    assert torch.equal(a.pop("pred"), b.pop("pred")) and a == b
