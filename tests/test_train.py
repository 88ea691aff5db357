import numpy as np
import pandas as pd
import pytest
import torch

from kitscascade.config import deep_merge, defaults
from kitscascade.data import TrainingVolume
from kitscascade.train import load_checkpoint, model_from_checkpoint, resume_path_for, train_model

NETWORK = {"kind": "unet", "in_channels": 1, "num_classes": 2, "patch_size": [8, 16, 16],
           "base_features": 4, "max_features": 8}
TRAINING = deep_merge(defaults()["stage1"]["training"], {
    "iterations": 6, "batch_size": 2, "learning_rate": 1e-3, "lr_decay": "poly", "foreground_fraction": 0.5,
    "checkpoint_every": 2, "seed": 3, "device": "cpu"})


def volumes():
    rng = np.random.default_rng(0)
    label = np.zeros((12, 24, 24), np.uint8)
    label[4:8, 8:16, 8:14] = 1
    image = (rng.normal(size=label.shape) + 2 * label).astype(np.float32)[None]
    return [TrainingVolume.from_arrays(image, label, max_foreground=TRAINING["max_foreground_voxels"])]


class Interrupt(Exception):
    pass


def test_checkpoint_loads_with_weights_only_and_describes_itself(tmp_path):
    ckpt = tmp_path / "fold_0.pt"
    train_model(volumes(), NETWORK, TRAINING, ckpt, tmp_path / "curve.csv", extra={"fold": 0}, progress=False)
    state = torch.load(ckpt, weights_only=True)
    assert state["iteration"] == 6 and state["network"] == NETWORK and state["extra"] == {"fold": 0}
    model = model_from_checkpoint(load_checkpoint(ckpt))
    out = model(torch.zeros(1, 1, 8, 16, 16))
    assert out[0].shape == (1, 2, 8, 16, 16)
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert list(curve["iteration"]) == list(range(1, 7)) and np.isfinite(curve["loss"]).all()
    assert not resume_path_for(ckpt).exists()  # removed once the final checkpoint is written


def test_interrupted_training_resumes_to_the_same_result(tmp_path, monkeypatch):
    reference = train_model(volumes(), NETWORK, TRAINING, tmp_path / "ref.pt", tmp_path / "ref.csv", progress=False)

    import kitscascade.train as train_module

    real_sample = train_module.sample_batch
    calls = {"n": 0}

    def dying_sample(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # killed during iteration 4, after the checkpoint at iteration 2
            raise Interrupt
        return real_sample(*args, **kwargs)

    ckpt = tmp_path / "run.pt"
    monkeypatch.setattr(train_module, "sample_batch", dying_sample)
    with pytest.raises(Interrupt):
        train_model(volumes(), NETWORK, TRAINING, ckpt, tmp_path / "run.csv", progress=False)
    assert not ckpt.exists() and resume_path_for(ckpt).exists()
    assert torch.load(resume_path_for(ckpt), weights_only=True)["iteration"] == 2

    monkeypatch.setattr(train_module, "sample_batch", real_sample)
    resumed = train_model(volumes(), NETWORK, TRAINING, ckpt, tmp_path / "run.csv", progress=False)
    assert resumed["iteration"] == 6
    assert list(pd.read_csv(tmp_path / "run.csv")["iteration"]) == list(range(1, 7))
    for name, value in reference["model_state"].items():
        torch.testing.assert_close(resumed["model_state"][name], value, rtol=0, atol=0, msg=name)


def test_stale_resume_file_from_another_config_is_ignored(tmp_path):
    ckpt = tmp_path / "fold.pt"
    other = dict(TRAINING, iterations=4)
    torch.save({"network": NETWORK, "training": other, "iteration": 2}, resume_path_for(ckpt))
    state = train_model(volumes(), NETWORK, TRAINING, ckpt, tmp_path / "c.csv", progress=False)
    assert state["iteration"] == 6 and len(pd.read_csv(tmp_path / "c.csv")) == 6


def test_training_reduces_the_loss(tmp_path):
    cfg = dict(TRAINING, iterations=80, learning_rate=1e-2, lr_decay="constant")
    train_model(volumes(), NETWORK, cfg, tmp_path / "m.pt", tmp_path / "c.csv", progress=False)
    loss = pd.read_csv(tmp_path / "c.csv")["loss"]
    assert loss.head(5).mean() > 1.0 and loss.tail(10).mean() < 0.3  # CE + Dice of a learnable box


def test_a_new_checkpoint_interval_keeps_the_resume_file(tmp_path):
    ckpt = tmp_path / "fold.pt"
    import kitscascade.train as train_module

    state = {"network": NETWORK, "training": dict(TRAINING, checkpoint_every=5), "iteration": 6,
             "model_state": train_module.build_network(**NETWORK).state_dict()}
    torch.save(state, resume_path_for(ckpt))
    with pytest.raises(KeyError):  # it was taken up: the (incomplete) optimizer state is missing
        train_model(volumes(), NETWORK, TRAINING, ckpt, tmp_path / "c.csv", progress=False)


def test_gradient_clipping_norm_is_a_config_key(tmp_path, monkeypatch):
    import kitscascade.train as train_module

    seen = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(train_module.torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: seen.append(max_norm) or real(params, max_norm))
    cfg = dict(TRAINING, iterations=2, grad_clip_norm=0.5)
    train_model(volumes(), NETWORK, cfg, tmp_path / "m.pt", tmp_path / "c.csv", progress=False)
    assert seen == [0.5, 0.5]
