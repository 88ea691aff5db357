import numpy as np
import pandas as pd
import pytest
import torch

from kitscascade.config import deep_merge, defaults
from kitscascade.data import TrainingBatches, TrainingVolume
from kitscascade.train import (batch_loader, load_checkpoint, loader_workers, model_from_checkpoint, resume_path_for,
                               train_model, training_data_digest)

NETWORK = {"kind": "unet", "in_channels": 1, "num_classes": 2, "patch_size": [8, 16, 16],
           "base_features": 4, "max_features": 8}
TRAINING = deep_merge(defaults()["stage1"]["training"], {
    "iterations": 6, "batch_size": 2, "learning_rate": 1e-3, "lr_decay": "poly", "foreground_fraction": 0.5,
    "checkpoint_every": 2, "seed": 3, "device": "cpu", "log_every": 1, "num_workers": 0})


def volumes(seed: int = 0):
    rng = np.random.default_rng(seed)
    label = np.zeros((12, 24, 24), np.uint8)
    label[4:8, 8:16, 8:14] = 1
    image = (rng.normal(size=label.shape) + 2 * label).astype(np.float32)[None]
    return [TrainingVolume.from_arrays(image, label, max_foreground=TRAINING["max_foreground_voxels"])]


class Interrupt(Exception):
    pass


def die_in_step(monkeypatch, n: int = 4):
    """Make the ``n``-th optimizer step raise ``Interrupt`` (a killed job); returns the real step, to put back."""
    import kitscascade.train as train_module

    real_step, calls = train_module.optimizer_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "optimizer_step", dying_step)
    return real_step


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


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_training_resumes_to_the_same_result(tmp_path, monkeypatch, workers):
    """Killed in iteration 4 (after the resume file of iteration 2), restarted with loader workers:
    the weights and the loss curve are those of an uninterrupted run without workers."""
    reference = train_model(volumes(), NETWORK, TRAINING, tmp_path / "ref.pt", tmp_path / "ref.csv", progress=False)

    import kitscascade.train as train_module

    real_step = die_in_step(monkeypatch)
    ckpt, cfg = tmp_path / "run.pt", dict(TRAINING, num_workers=workers)
    with pytest.raises(Interrupt):
        train_model(volumes(), NETWORK, cfg, ckpt, tmp_path / "run.csv", progress=False)
    assert not ckpt.exists() and resume_path_for(ckpt).exists()
    assert torch.load(resume_path_for(ckpt), weights_only=True)["iteration"] == 2

    monkeypatch.setattr(train_module, "optimizer_step", real_step)
    resumed = train_model(volumes(), NETWORK, cfg, ckpt, tmp_path / "run.csv", progress=False)
    assert resumed["iteration"] == 6
    assert_same_weights(reference["model_state"], resumed["model_state"])
    curve, ref_curve = pd.read_csv(tmp_path / "run.csv"), pd.read_csv(tmp_path / "ref.csv")
    assert list(curve["iteration"]) == list(range(1, 7))
    np.testing.assert_array_equal(curve["loss"], ref_curve["loss"])


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_loader_workers_give_the_same_batches(tmp_path):
    batches = TrainingBatches(volumes(), (8, 16, 16), dict(TRAINING, batch_size=3), seed=5, fold=1, iterations=12)
    made = {}
    for workers in (0, 1, 4):
        made[workers] = list(batch_loader(batches, start=3, workers=workers, prefetch_factor=2, pin_memory=False))
        assert len(made[workers]) == 9
    for workers in (1, 4):
        for (x0, y0), (x, y) in zip(made[0], made[workers]):
            assert torch.equal(x0, x) and torch.equal(y0, y)
    x3, y3 = batches[3]
    assert torch.equal(made[0][0][0], torch.from_numpy(x3)) and y3.dtype == np.uint8
    # the fold and the seed each give other batches
    other = TrainingBatches(volumes(), (8, 16, 16), dict(TRAINING, batch_size=3), seed=5, fold=2, iterations=12)
    assert not np.array_equal(other[3][0], x3)


def test_weights_do_not_depend_on_the_number_of_workers(tmp_path):
    runs = [train_model(volumes(), NETWORK, dict(TRAINING, num_workers=w), tmp_path / f"w{w}.pt",
                        tmp_path / f"w{w}.csv", progress=False) for w in (0, 2)]
    assert_same_weights(runs[0]["model_state"], runs[1]["model_state"])


def test_channels_last_training_on_the_cpu_follows_the_contiguous_run(tmp_path):
    """``channels_last`` is an execution setting (config.EXECUTION_KEYS): the same losses and network outputs
    up to the order of floating-point sums, and a checkpoint a contiguous model loads. (Weights are not
    compared one by one: a convolution's bias before instance norm has a gradient of rounding noise, which
    Adam scales up to steps of the learning rate.)"""
    runs = [train_model(volumes(), NETWORK, dict(TRAINING, channels_last=c), tmp_path / f"{c}.pt",
                        tmp_path / f"{c}.csv", progress=False) for c in (False, True)]
    curves = [pd.read_csv(tmp_path / f"{c}.csv")["loss"] for c in (False, True)]
    assert curves[1].tolist() == pytest.approx(curves[0].tolist(), rel=1e-4)
    models = [model_from_checkpoint(load_checkpoint(tmp_path / f"{c}.pt")) for c in (False, True)]
    assert all(p.is_contiguous() for p in models[1].parameters())
    x = torch.randn(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(models[1](x)[0], models[0](x)[0], rtol=1e-3, atol=1e-3)


def test_folds_start_from_different_weights(tmp_path):
    a, b = (train_model(volumes(), NETWORK, dict(TRAINING, iterations=1), tmp_path / f"f{k}.pt",
                        tmp_path / f"f{k}.csv", fold=k, progress=False) for k in (0, 1))
    assert not torch.equal(a["model_state"]["heads.0.weight"], b["model_state"]["heads.0.weight"])


def test_the_curve_logs_the_mean_loss_every_n_iterations(tmp_path):
    train_model(volumes(), NETWORK, TRAINING, tmp_path / "a.pt", tmp_path / "a.csv", progress=False)
    train_model(volumes(), NETWORK, dict(TRAINING, log_every=4), tmp_path / "b.pt", tmp_path / "b.csv",
                progress=False)
    every, windowed = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert list(windowed["iteration"]) == [4, 6]  # and the last, shorter window
    assert windowed["loss"].tolist() == pytest.approx([every["loss"][:4].mean(), every["loss"][4:].mean()], rel=1e-6)
    assert (windowed["batch_wait_seconds"] >= 0).all() and windowed["seconds"].is_monotonic_increasing


def test_default_workers_follow_the_jobs_cpus(monkeypatch):
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert loader_workers(None, 8, gpu) == 7 and loader_workers(None, 1, gpu) == 0
    assert loader_workers(None, 8, cpu) == 1 and loader_workers(None, 1, cpu) == 0  # the CPU trains itself
    assert loader_workers(3, 8, gpu) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")  # the job's allocation caps it
    assert loader_workers(None, 8, gpu) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "32")  # Snakemake itself inside a larger allocation
    assert loader_workers(None, 8, gpu) == 7


def test_the_curve_clock_continues_over_a_resume(tmp_path, monkeypatch):
    import kitscascade.train as train_module

    real_step = die_in_step(monkeypatch)
    cfg = dict(TRAINING, log_every=3)  # the resume file of iteration 2 falls inside a log window
    with pytest.raises(Interrupt):
        train_model(volumes(), NETWORK, cfg, tmp_path / "m.pt", tmp_path / "c.csv", progress=False)
    saved = torch.load(resume_path_for(tmp_path / "m.pt"), weights_only=True)["seconds"]
    monkeypatch.setattr(train_module, "optimizer_step", real_step)
    train_model(volumes(), NETWORK, cfg, tmp_path / "m.pt", tmp_path / "c.csv", progress=False)
    seconds = pd.read_csv(tmp_path / "c.csv")["seconds"]
    assert seconds.iloc[0] > saved > 0 and seconds.is_monotonic_increasing


def test_stale_resume_file_from_another_config_is_ignored(tmp_path):
    ckpt = tmp_path / "fold.pt"
    other = dict(TRAINING, iterations=4)
    torch.save({"network": NETWORK, "training": other, "iteration": 2}, resume_path_for(ckpt))
    state = train_model(volumes(), NETWORK, TRAINING, ckpt, tmp_path / "c.csv", progress=False)
    assert state["iteration"] == 6 and len(pd.read_csv(tmp_path / "c.csv")) == 6


def test_a_resume_file_of_the_other_target_is_ignored(tmp_path, monkeypatch, caplog):
    """A region-based run's resume file does not continue a class-based run of the same network."""
    import kitscascade.train as train_module

    real_step = die_in_step(monkeypatch)
    ckpt, regions = tmp_path / "fold.pt", [(1,), (1,)]  # two sigmoid outputs, like NETWORK's two classes
    with pytest.raises(Interrupt):
        train_model(volumes(), NETWORK, TRAINING, ckpt, tmp_path / "c.csv", progress=False, regions=regions)
    assert torch.load(resume_path_for(ckpt), weights_only=True)["regions"] == [[1], [1]]
    monkeypatch.setattr(train_module, "optimizer_step", real_step)
    with caplog.at_level("WARNING", logger="kitscascade.train"):
        state = train_model(volumes(), NETWORK, TRAINING, ckpt, tmp_path / "c.csv", progress=False)
    assert "ignoring" in caplog.text and state["regions"] is None and state["iteration"] == 6
    reference = train_model(volumes(), NETWORK, TRAINING, tmp_path / "ref.pt", tmp_path / "ref.csv", progress=False)
    assert_same_weights(reference["model_state"], state["model_state"])


def test_a_resume_file_of_other_training_data_is_ignored(tmp_path, monkeypatch, caplog):
    """A job rerun because its inputs changed (new ROIs, say) starts afresh: its weights are those of an
    uninterrupted run on the new data, not a mix of both."""
    import kitscascade.train as train_module

    real_step = die_in_step(monkeypatch)
    ckpt = tmp_path / "fold.pt"
    with pytest.raises(Interrupt):
        train_model(volumes(0), NETWORK, TRAINING, ckpt, tmp_path / "c.csv", progress=False)
    assert torch.load(resume_path_for(ckpt), weights_only=True)["data"] == training_data_digest(volumes(0))
    monkeypatch.setattr(train_module, "optimizer_step", real_step)
    with caplog.at_level("WARNING", logger="kitscascade.train"):
        state = train_model(volumes(1), NETWORK, TRAINING, ckpt, tmp_path / "c.csv", progress=False)
    assert "trained on other data (the training volumes changed since)" in caplog.text and state["iteration"] == 6
    reference = train_model(volumes(1), NETWORK, TRAINING, tmp_path / "ref.pt", tmp_path / "ref.csv", progress=False)
    assert_same_weights(reference["model_state"], state["model_state"])


def test_training_data_digest_sees_every_voxel_and_the_order():
    a, b = volumes(0), volumes(1)
    assert training_data_digest(a) == training_data_digest(volumes(0))
    assert len({training_data_digest(v) for v in (a, b, a + b, b + a)}) == 4
    label = a[0].label.copy()
    label[0, 0, 0] = 1  # one voxel of the label
    changed = [TrainingVolume(a[0].channels, label, a[0].foreground)]
    assert training_data_digest(changed) != training_data_digest(a)
    channels = a[0].channels.copy()
    channels[0, -1, -1, -1] += 1e-3  # one voxel of the image
    assert training_data_digest([TrainingVolume(channels, a[0].label, a[0].foreground)]) != training_data_digest(a)
    empty = [TrainingVolume(np.zeros((1, 0, 4, 4), np.float32), np.zeros((0, 4, 4), np.uint8), {})]
    assert training_data_digest(empty) != training_data_digest(a)


def test_training_reduces_the_loss(tmp_path):
    cfg = dict(TRAINING, iterations=80, learning_rate=1e-2, lr_decay="constant")
    train_model(volumes(), NETWORK, cfg, tmp_path / "m.pt", tmp_path / "c.csv", progress=False)
    loss = pd.read_csv(tmp_path / "c.csv")["loss"]
    assert loss.head(5).mean() > 1.0 and loss.tail(10).mean() < 0.3  # CE + Dice of a learnable box


def test_a_new_checkpoint_interval_keeps_the_resume_file(tmp_path):
    ckpt = tmp_path / "fold.pt"
    import kitscascade.train as train_module

    state = {"network": NETWORK, "training": dict(TRAINING, checkpoint_every=5, num_workers=2), "iteration": 6, "fold": 0,
             "model_state": train_module.build_network(**NETWORK).state_dict(), "data": training_data_digest(volumes())}
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


def test_cpu_precision_settings(monkeypatch):
    """``auto`` follows the CPU's native bfloat16; training and inference name their own key in errors."""
    import kitscascade.train as train_module

    cpu = torch.device("cpu")
    assert train_module.autocast_dtype("fp16", cpu) is None  # training.precision is CUDA's
    assert train_module.autocast_dtype("fp16", cpu, "bf16") == torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
        assert train_module.autocast_dtype("fp16", cpu, "auto") == expected
        assert train_module.cpu_autocast_dtype("auto") == expected
    with pytest.raises(ValueError, match="training.cpu_precision='fp16': expected auto, bf16 or fp32"):
        train_module.autocast_dtype("fp16", cpu, "fp16")
    with pytest.raises(ValueError, match="inference.cpu_precision='x': expected auto, bf16 or fp32"):
        train_module.cpu_autocast_dtype("x")


def test_bf16_training_on_the_cpu_autocasts_the_forward_pass(tmp_path, monkeypatch, caplog):
    """``cpu_precision: bf16`` runs the network in bfloat16 (seen by a hook), keeps the weights float32,
    still learns the box, and gives other weights than fp32."""
    import logging

    seen = []
    real_forward = torch.nn.Conv3d.forward

    def spy(self, x):
        out = real_forward(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv3d, "forward", spy)
    cfg = dict(TRAINING, iterations=80, learning_rate=1e-2, lr_decay="constant")
    with caplog.at_level(logging.INFO, logger="kitscascade.train"):
        bf16 = train_model(volumes(), NETWORK, dict(cfg, cpu_precision="bf16"), tmp_path / "b.pt", tmp_path / "b.csv",
                           progress=False)
    assert set(seen) == {torch.bfloat16} and "training on cpu (bf16)" in caplog.text
    assert all(v.dtype == torch.float32 for v in bf16["model_state"].values() if v.is_floating_point())
    loss = pd.read_csv(tmp_path / "b.csv")["loss"]
    assert loss.head(5).mean() > 1.0 and loss.tail(10).mean() < 0.3
    seen.clear()
    fp32 = train_model(volumes(), NETWORK, cfg, tmp_path / "f.pt", tmp_path / "f.csv", progress=False)
    assert set(seen) == {torch.float32}
    assert any(not torch.equal(fp32["model_state"][k], bf16["model_state"][k]) for k in fp32["model_state"])


def test_a_resume_file_of_other_arithmetic_is_ignored(tmp_path, monkeypatch, caplog):
    """``cpu_precision: auto`` killed on a CPU with native bfloat16 and resumed on one without restarts in float32
    rather than continuing a bfloat16 run in float32."""
    import kitscascade.train as train_module

    cfg = dict(TRAINING, cpu_precision="auto")
    real_step = die_in_step(monkeypatch)
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)
    ckpt = tmp_path / "fold.pt"
    with pytest.raises(Interrupt):
        train_model(volumes(), NETWORK, cfg, ckpt, tmp_path / "c.csv", progress=False)
    assert torch.load(resume_path_for(ckpt), weights_only=True)["arithmetic"] == "bf16"
    monkeypatch.setattr(train_module, "optimizer_step", real_step)
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="kitscascade.train"):
        state = train_model(volumes(), NETWORK, cfg, ckpt, tmp_path / "c.csv", progress=False)
    assert "ignoring" in caplog.text and state["iteration"] == 6
    reference = train_model(volumes(), NETWORK, TRAINING, tmp_path / "ref.pt", tmp_path / "ref.csv", progress=False)
    assert_same_weights(reference["model_state"], state["model_state"])
