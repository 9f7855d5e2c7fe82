"""The data of SPEC §3: three seeded regressions, the MNIST subsample, and the batching over in-memory tensors."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
import torch
from support import MNIST_FILES
from torch.utils.data import DistributedSampler

from gf_lightning.data import (
    GaussianRegression,
    MNISTDataModule,
    QuadraticRegression,
    SinCosRegression,
    TensorBatches,
)
from gf_lightning.errors import GFConfigError


# ----------------------------------------------------------------------------------------------------------------------
# the three regressions
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exp1():
    return SinCosRegression(seed=0).build()


@pytest.fixture(scope="module")
def exp2():
    return QuadraticRegression(seed=0).build()


@pytest.fixture(scope="module")
def exp3():
    return GaussianRegression(seed=0).build()


def _check_layout(t: dict, n_train: int, n_test: int, d: int = 40) -> None:
    assert set(t) == {"x_train", "y_train", "x_test", "y_test"}
    assert tuple(t["x_train"].shape) == (n_train, d)
    assert tuple(t["y_train"].shape) == (n_train, 1)
    assert tuple(t["x_test"].shape) == (n_test, d)
    assert tuple(t["y_test"].shape) == (n_test, 1)
    for v in t.values():
        assert v.dtype == torch.float32
        assert torch.isfinite(v).all()


def _all(t: dict, key: str) -> torch.Tensor:
    return torch.cat([t[f"{key}_train"], t[f"{key}_test"]])


def test_exp1_sincos(exp1):
    _check_layout(exp1, 8000, 2000)
    x, y = _all(exp1, "x"), _all(exp1, "y")
    assert x.min() >= 0 and x.max() <= 1
    # 400 000 U(0,1) entries: the mean's standard error is 0.289/√4e5 ≈ 4.6e-4
    assert abs(x.double().mean().item() - 0.5) < 0.003
    assert x.double().std().item() == pytest.approx(1 / math.sqrt(12), rel=0.01)  # uniform, not e.g. normal
    assert y.min() >= -2 and y.max() <= 2
    assert y.std() > 0.3  # a non-trivial target


def test_exp1_targets_are_sin_plus_cos_of_gaussian_projections():
    """``target`` draws p, q ~ N(0, I) from the generator it is given and returns sin(x·p) + cos(x·q)."""
    dm = SinCosRegression(d=7, seed=0)
    x = torch.rand(50, 7, dtype=torch.float64)
    y = dm.target(x, torch.Generator().manual_seed(123))
    p, q = torch.randn(2, 7, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    torch.testing.assert_close(y.reshape(-1), torch.sin(x @ p) + torch.cos(x @ q))


def test_build_is_the_documented_seeded_draw(exp1):
    """One generator seeded with ``seed``: inputs first, then the target's coefficients; first 80 % train."""
    dm = SinCosRegression(seed=0)
    gen = torch.Generator().manual_seed(0)
    x = dm.sample_inputs(10_000, gen)
    y = dm.target(x, gen).reshape(-1, 1)
    assert torch.equal(exp1["x_train"], x[:8000].float()) and torch.equal(exp1["x_test"], x[8000:].float())
    assert torch.equal(exp1["y_train"], y[:8000].float()) and torch.equal(exp1["y_test"], y[8000:].float())


def test_exp2_quadratic(exp2):
    _check_layout(exp2, 8000, 2000)
    x, y = _all(exp2, "x").double(), _all(exp2, "y").double()
    assert x.min() >= 0 and x.max() <= 5
    assert abs(x.mean().item() - 2.5) < 0.02
    assert x.max() > 4.9 and x.min() < 0.1  # the whole interval, not U(0,1)
    # y = Σ cᵢ xᵢ² exactly: least squares on the features xᵢ² leaves only float32 rounding
    c = torch.linalg.lstsq(x.square(), y).solution
    resid = y - x.square() @ c
    assert resid.abs().max() < 1e-3 * y.abs().max()
    # c ~ N(0, I): 40 draws, mean within ±1, std within (0.5, 1.6)
    assert abs(c.mean().item()) < 1.0 and 0.5 < c.std().item() < 1.6
    assert y.std() > 10  # not normalised (SPEC §3: std ≈ 32)


def test_exp3_gaussian(exp3):
    _check_layout(exp3, 800, 200)
    x, y = _all(exp3, "x").double(), _all(exp3, "y").double()
    n = x.shape[0]
    # per-coordinate std 0.2: standard error of a sample std ≈ σ/√(2n) = 0.0045; of a mean σ/√n = 0.0063; 5 of each
    std, mean = x.std(dim=0), x.mean(dim=0)
    assert (std - 0.2).abs().max() < 5 * 0.2 / math.sqrt(2 * n)
    assert mean.abs().max() < 5 * 0.2 / math.sqrt(n)
    assert abs(x.square().sum(1).mean().item() - 1.6) < 0.05  # E‖x‖² = 40 · 0.04
    assert (y > 0).all() and (y <= 1).all()
    torch.testing.assert_close(y.reshape(-1), torch.exp(-10 * x.square().sum(1)), rtol=1e-5, atol=0)
    assert y.median() < 1e-5  # the tiny targets of SPEC §3 (median ≈ 1.5e-7)


@pytest.mark.parametrize("cls", [SinCosRegression, QuadraticRegression, GaussianRegression])
def test_one_seed_is_bit_identical_two_seeds_differ(cls):
    a, b, c = cls(n_samples=300, seed=7).build(), cls(n_samples=300, seed=7).build(), cls(n_samples=300, seed=8).build()
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a[key], c[key]), key


def test_seed_none_takes_the_run_seed():
    torch.manual_seed(5)
    a = SinCosRegression(n_samples=100).build()
    torch.manual_seed(5)
    b = SinCosRegression(n_samples=100).build()
    assert torch.equal(a["x_train"], b["x_train"])


@pytest.mark.parametrize("cls", [SinCosRegression, QuadraticRegression, GaussianRegression])
def test_standardize_uses_the_training_split_statistics(cls):
    """``standardize: true`` (Ma, Mao & Shen 2024): the training inputs get per-feature mean 0 and standard deviation 1,
    the held-out inputs the *training* split's shift and scale, and the targets stay the raw inputs' (the same draw).
    Catches: the held-out split z-scored with its own statistics (a leak: tried, its mean becomes exactly 0), targets
    computed from the standardized inputs."""
    raw = cls(n_samples=500, seed=0).build()
    std = cls(n_samples=500, seed=0, standardize=True).build()
    x = raw["x_train"].double()
    mu, sigma = x.mean(dim=0), x.std(dim=0)
    assert std["x_train"].double().mean(dim=0).abs().max() < 1e-5
    assert torch.allclose(std["x_train"].double().std(dim=0), torch.ones(x.shape[1], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(std["x_test"].double(), (raw["x_test"].double() - mu) / sigma, atol=1e-4)
    assert std["x_test"].double().mean(dim=0).abs().max() > 1e-3  # not its own statistics
    assert torch.equal(std["y_train"], raw["y_train"]) and torch.equal(std["y_test"], raw["y_test"])


def test_batch_size_null_is_full_batch():
    """``batch_size: null``: one step an epoch over the whole training set (the paper's Fig. 1 runs gradient
    descent)."""
    dm = SinCosRegression(n_samples=100, batch_size=None, seed=0)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert dm.batch_size == 80 and len(batches) == 1 and len(batches[0][0]) == 80


def test_batch_larger_than_training_set_is_refused_at_setup():
    dm = SinCosRegression(n_samples=100, batch_size=81, seed=0)
    with pytest.raises(GFConfigError, match=r"data\.batch_size.*80"):
        dm.setup("fit")


# ----------------------------------------------------------------------------------------------------------------------
# TensorBatches
# ----------------------------------------------------------------------------------------------------------------------
def _indexed(n: int):
    """x[i] = i (as a float feature), y[i] = i: a batch tells which samples it holds."""
    return torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n)


def _epoch(tb: TensorBatches, epoch: int) -> list[torch.Tensor]:
    tb.sampler.set_epoch(epoch)
    batches = list(tb)
    for x, y in batches:
        assert torch.equal(x[:, 0].long(), y)  # x and y rows stay paired
    return [y for _, y in batches]


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_training_set_once_per_epoch(shuffle):
    x, y = _indexed(103)
    tb = TensorBatches(x, y, batch_size=10, shuffle=shuffle, seed=0)
    assert len(tb) == 11  # no drop_last: the last batch holds 3
    for epoch in range(3):
        ys = _epoch(tb, epoch)
        assert len(ys) == len(tb)
        assert [len(b) for b in ys] == [10] * 10 + [3]
        assert torch.equal(torch.cat(ys).sort().values, torch.arange(103))


def test_drop_last_drops_the_short_batch():
    x, y = _indexed(103)
    tb = TensorBatches(x, y, batch_size=10, shuffle=True, drop_last=True)
    assert len(tb) == 10 and [len(b) for b in _epoch(tb, 0)] == [10] * 10


def test_order_is_a_function_of_seed_and_epoch():
    x, y = _indexed(200)
    a = TensorBatches(x, y, batch_size=32, shuffle=True, seed=3)
    b = TensorBatches(x, y, batch_size=32, shuffle=True, seed=3)
    order = lambda tb, e: torch.cat(_epoch(tb, e))  # noqa: E731
    assert torch.equal(order(a, 4), order(b, 4))
    assert torch.equal(order(a, 4), order(a, 4))  # the same epoch again: the same order
    assert not torch.equal(order(a, 4), order(a, 5))
    c = TensorBatches(x, y, batch_size=32, shuffle=True, seed=4)
    assert not torch.equal(order(a, 4), order(c, 4))
    unshuffled = TensorBatches(x, y, batch_size=32, shuffle=False)
    assert torch.equal(order(unshuffled, 0), torch.arange(200))
    assert torch.equal(order(unshuffled, 1), torch.arange(200))


# (samples, global batch, processes): full batches only; a last batch of one sample (rank 1 holds none); a batch
# that does not divide among the ranks; a last batch of two on four ranks (two hold none); three ranks
SHARDING = [(100, 10, 2), (101, 10, 2), (103, 9, 2), (50, 12, 4), (60, 12, 3)]


@pytest.mark.parametrize("n, batch_size, world", SHARDING)
@pytest.mark.parametrize("epoch", [0, 3])
def test_ranks_share_every_global_batch_without_padding(n, batch_size, world, epoch):
    """Every rank takes the same number of steps, and the ranks' parts of step k are disjoint and together the
    one-process batch k, which ``Batch.total`` counts: every sample once, none repeated. Where the batches are full and
    divide among the ranks, a rank's samples are ``DistributedSampler``'s.

    Breakage: padding the last batch as ``DistributedSampler`` does (a sample counted twice: the union is larger than
    the one-process batch), or cutting each rank's shard of the whole epoch into batches (ranks then disagree on the
    number of steps, or step k holds other samples than the one-process batch k)."""
    x, y = _indexed(n)
    one = TensorBatches(x, y, batch_size=batch_size, shuffle=True, seed=11)
    one.sampler.set_epoch(epoch)
    reference = list(one)
    ranks = []
    for rank in range(world):
        tb = TensorBatches(x, y, batch_size=batch_size, shuffle=True, seed=11, rank=rank, world_size=world)
        ranks.append(list(zip(_epoch(tb, epoch), list(tb))))
        assert len(tb) == len(reference) == math.ceil(n / batch_size)
    for k, whole in enumerate(reference):
        parts = [batches[k][0] for batches in ranks]
        assert [batches[k][1].total for batches in ranks] == [len(whole.y)] * world
        assert sum(len(p) for p in parts) == len(whole.y) and max(map(len, parts)) - min(map(len, parts)) <= 1
        assert sorted(torch.cat(parts).tolist()) == sorted(whole.y.tolist())
    if n % batch_size == 0 and batch_size % world == 0:
        for rank, batches in enumerate(ranks):
            ds = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=11)
            ds.set_epoch(epoch)
            assert torch.cat([ys for ys, _ in batches]).tolist() == list(ds)


# ----------------------------------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------------------------------
def write_idx(raw: Path, n_train: int = 30, n_test: int = 12) -> None:
    """The four uncompressed IDX files: image i has every pixel = 8·i (mod 256), label i mod 10 (train) or (i+3) mod
    10."""
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, shift in (("train", n_train, 0), ("t10k", n_test, 3)):
        pixels = bytes(((8 * i) % 256) for i in range(n) for _ in range(28 * 28))
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels)
        labels = bytes((i + shift) % 10 for i in range(n))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels)


def test_mnist_from_a_tiny_idx_set(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw")
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False, n_train=20, n_test=10, batch_size=4, seed=0)
    dm.prepare_data()  # download=False with the files present: nothing to do, no error
    dm.setup("fit")
    t = dm.tensors
    assert tuple(t["x_train"].shape) == (20, 784) and tuple(t["x_test"].shape) == (10, 784)
    assert t["x_train"].dtype == torch.float32 and t["y_train"].dtype == torch.long
    for split, n, shift in (("train", 30, 0), ("test", 12, 3)):
        x, y = t[f"x_{split}"], t[f"y_{split}"]
        assert torch.equal(x, x[:, :1].expand_as(x))  # each image constant, as written
        i = torch.round(x[:, 0] * 255 / 8).long()  # pixels / 255: recover the image's index
        torch.testing.assert_close(x[:, 0], (8 * i).float() / 255)
        assert torch.equal(y, (i + shift) % 10)  # images and labels stay paired through the subsample
        assert len(set(i.tolist())) == len(i) and i.max() < n  # drawn without replacement
    assert dm.dims == (784, 10) and dm.task == "classification"
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [4] * 5
    # another seed, another subsample; the same seed, the same one
    same = MNISTDataModule(data_dir=str(tmp_path), download=False, n_train=20, n_test=10, seed=0).build()
    other = MNISTDataModule(data_dir=str(tmp_path), download=False, n_train=20, n_test=10, seed=1).build()
    assert torch.equal(same["y_train"], t["y_train"]) and torch.equal(same["x_train"], t["x_train"])
    assert not torch.equal(other["x_train"], t["x_train"])


def test_mnist_subsample_larger_than_file_is_refused(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw")
    with pytest.raises(GFConfigError, match=r"data\.n_train \(31\)"):
        MNISTDataModule(data_dir=str(tmp_path), download=False, n_train=31, n_test=10, batch_size=4).build()


def test_mnist_real_files(mnist_dir):
    dm = MNISTDataModule(data_dir=str(mnist_dir), download=False, seed=0)
    dm.setup("fit")
    t = dm.tensors
    assert tuple(t["x_train"].shape) == (8000, 784) and tuple(t["x_test"].shape) == (2000, 784)
    assert tuple(t["y_train"].shape) == (8000,) and tuple(t["y_test"].shape) == (2000,)
    for split in ("train", "test"):
        x, y = t[f"x_{split}"], t[f"y_{split}"]
        assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
        assert 0.1 < x.mean() < 0.15  # MNIST's mean pixel ≈ 0.13
        assert y.dtype == torch.long and set(y.unique().tolist()) == set(range(10))
        counts = torch.bincount(y, minlength=10).float() / len(y)
        assert counts.min() > 0.07 and counts.max() < 0.14  # a random subsample: roughly balanced


def test_mnist_missing_files_with_download_off(tmp_path):
    """Both hooks refuse, with the folder and the files: ``setup`` too, which runs on every rank, while ``prepare_data``
    runs on one process per node (the command-line check, test_bad_inputs.py, reaches ``prepare_data`` only)."""
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False, batch_size=4)
    for call in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(FileNotFoundError) as info:
            call()
        msg = str(info.value)
        assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg
        for name in MNIST_FILES:
            assert name in msg
        assert "data.download" in msg


def test_mnist_partial_files_name_the_missing_ones(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: t10k-labels-idx1-ubyte\)"):
        MNISTDataModule(data_dir=str(tmp_path), download=False).setup("fit")
