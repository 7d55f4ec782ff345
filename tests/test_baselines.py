import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from explorer.core.data import available, how_to_get
from explorer.core.stats import wilson
from explorer.core.train import TrainConfig, evaluate
from explorer.core.zoo import create_model
from explorer.models.baselines import (
    MODELS_DIR,
    baseline_data,
    describe_baseline,
    list_baselines,
    load_baseline,
    load_into,
    load_state_dict_file,
    sha256_file,
    train_baseline,
)

COMMITTED = sorted(MODELS_DIR.glob("*.safetensors"))


def test_embedded_baselines_are_committed():
    names = {p.stem for p in COMMITTED}
    assert "digits_cnn-digits" in names
    cards = list_baselines()
    big = [c for c in cards if c["dataset"] == "digits" and 1_000_000 <= c["params"] <= 5_000_000]
    assert big, "a 1-5M parameter baseline on digits is needed for visible latency effects"
    digits = next(c for c in cards if c["name"] == "digits_cnn-digits")
    assert digits["accuracy"]["top1"] >= 97.0


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_checkpoint_reproduces_its_card_exactly(path):
    model, card = load_baseline(path)
    if not available(card["dataset"], card.get("dataset_root")):
        pytest.skip(f"{card['dataset']} is not on this machine: {how_to_get(card['dataset'])}")
    res = evaluate(model, baseline_data(card).test)
    for k in ("top1", "top3", "top5"):
        assert res[k] == card["accuracy"][k], k
    assert res["n"] == card["test_samples"]
    assert os.path.getsize(path) == card["file_bytes"]
    assert sha256_file(path) == card["sha256"]
    assert sum(p.numel() for p in model.parameters()) == card["params"]
    for key in ("architecture", "dataset", "split_seed", "train", "versions", "arch_kwargs"):
        assert key in card


@pytest.mark.parametrize("name,target", [("lenet5-fashion-mnist", 89.0), ("resnet8-fashion-mnist", 91.0),
                                         ("vit-fashion-mnist", 88.0)])
def test_fashion_mnist_baselines_meet_their_targets_and_say_how_they_were_made(name, target):
    card = json.loads((MODELS_DIR / f"{name}.json").read_text())
    assert card["accuracy"]["top1"] >= target and card["test_samples"] == 10_000
    assert card["params"] > 0 and card["macs"] > 0 and card["accuracy"]["top5"] > card["accuracy"]["top1"]
    train = card["train"]
    assert train["seconds"] > 0 and train["seed"] == 0 and train["command"].startswith("python -m explorer train")
    assert f"--epochs {train['epochs']}" in train["command"] and card["dataset_root"] is None
    if "top1_interval" in card:  # Wilson's interval of the count of right answers the card's top-1 stands for
        right = round(card["accuracy"]["top1"] * card["test_samples"] / 100)
        assert card["top1_interval"] == [round(v, 2) for v in wilson(right, card["test_samples"])]


def test_train_baseline_writes_weights_and_card(tmp_path):
    progress = []
    card = train_baseline("digits_cnn", "digits", cfg=TrainConfig(epochs=3), models_dir=tmp_path,
                          model_kwargs={"width": 0.5}, progress=lambda f, m: progress.append(f))
    w = tmp_path / "digits_cnn-digits.safetensors"
    assert w.is_file() and json.loads(w.with_suffix(".json").read_text()) == card
    assert card["file_bytes"] == w.stat().st_size and card["arch_kwargs"]["width"] == 0.5
    model, _ = load_baseline(w)
    assert evaluate(model, baseline_data(card).test)["top1"] == card["accuracy"]["top1"]
    assert progress and progress[-1] == pytest.approx(1.0)


def test_wrong_architecture_lists_missing_unexpected_and_misshaped(tmp_path):
    state = create_model("lenet5", image_size=8).state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        load_into(create_model("digits_cnn"), state, "lenet.safetensors")
    msg = str(e.value)
    assert "missing" in msg and "unexpected" in msg and "extra.weight" in msg and "mis-shaped" in msg


def test_nan_weights_are_refused():
    m = create_model("digits_cnn")
    state = {k: v.clone() for k, v in m.state_dict().items()}
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf values in features.0.weight"):
        load_into(create_model("digits_cnn"), state, "x")


def test_weights_of_the_wrong_kind_are_refused_not_cast():
    """load_state_dict casts silently: complex weights lost their imaginary part (and a NaN in them passed the
    NaN check, which looked at real floating tensors only); a fractional count was cut to an integer."""
    m = create_model("resnet8")
    state = {k: v.clone() for k, v in m.state_dict().items()}
    cplx = {**state, "fc.weight": state["fc.weight"].to(torch.complex64) + 5j}
    with pytest.raises(ValueError, match=r"'x' holds values of the wrong kind: fc.weight \(complex64 for float32\)"):
        load_into(create_model("resnet8"), cplx, "x")
    counter = next(k for k in state if k.endswith("num_batches_tracked"))
    with pytest.raises(ValueError, match=rf"{counter} \(float32 for int64\)"):
        load_into(create_model("resnet8"), {**state, counter: torch.tensor(2.5)}, "x")
    whole = load_into(create_model("resnet8"), {**state, counter: torch.tensor(3.0)}, "x")  # a whole number is fine
    assert whole.state_dict()[counter].item() == 3
    nan = {**state, "fc.weight": state["fc.weight"].to(torch.complex64)}
    nan["fc.weight"][0, 0] = complex(float("nan"), 0)
    with pytest.raises(ValueError, match="wrong kind"):
        load_into(create_model("resnet8"), nan, "x")
    eight = {k: (v.to(torch.float8_e4m3fn) if v.is_floating_point() else v) for k, v in state.items()}
    eight["fc.weight"][0, 0] = float("nan")  # float8 has no isfinite: a NotImplementedError, not this line
    with pytest.raises(ValueError, match="NaN or Inf values in fc.weight"):
        load_into(create_model("resnet8"), eight, "x")


def test_pt_loaded_weights_only_and_pickled_code_refused(tmp_path):
    m = create_model("digits_cnn")
    torch.save(m.state_dict(), tmp_path / "ok.pt")
    assert set(load_state_dict_file(tmp_path / "ok.pt")) == set(m.state_dict())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ValueError, match="refused"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_corrupted_safetensors_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(4)}, str(p))
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_state_dict_file(p)


def test_describe_baseline_has_per_layer_table():
    info = describe_baseline(MODELS_DIR / "digits_cnn-digits.safetensors")
    layers = info["layers"]
    assert layers["params"].sum() == info["measured"]["params"] == info["card"]["params"]
    assert list(layers["layer"])[0] == "features.0"
