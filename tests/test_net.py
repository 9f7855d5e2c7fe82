"""TwoLayerNet (SPEC §1): f(x) = aᵀ σ(Wᵀ [x; 1]), parameter count, initialisations, mean-field scale, bad settings.
(Its closed-form Gram J Jᵀ is checked against autograd in test_ieq.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gf_lightning.components import TwoLayerNet
from gf_lightning.data import SinCosRegression
from gf_lightning.errors import GFConfigError


def _by_hand(net: TwoLayerNet, x: torch.Tensor) -> torch.Tensor:
    """aᵀ σ(Wᵀ [x; 1]) for each row of x, written out with an explicit column of ones."""
    x_tilde = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)  # (B, d+1)
    return torch.clamp(x_tilde @ net.W, min=0.0) @ net.a


@pytest.mark.parametrize(
    "d, m, k, n",
    [
        (40, 1000, 1, 42_000),  # exp1-3
        (784, 100, 10, 79_500),  # MNIST
        (3, 5, 2, (3 + 1) * 5 + 5 * 2),
    ],
)
def test_parameter_count_and_shapes(d, m, k, n):
    net = TwoLayerNet(d=d, m=m, k=k)
    assert sum(p.numel() for p in net.parameters()) == n == (d + 1) * m + m * k
    assert tuple(net.W.shape) == (d + 1, m)
    assert tuple(net.a.shape) == (m, k)
    assert tuple(net(torch.rand(7, d)).shape) == (7, k)


@pytest.mark.parametrize("init", ["fan_in", "kaiming", "normal"])
@pytest.mark.parametrize("k", [1, 3])
def test_forward_matches_formula(init, k):
    torch.manual_seed(1)
    net = TwoLayerNet(d=6, m=17, k=k, init=init).double()
    x = torch.randn(11, 6, dtype=torch.float64)
    expected = _by_hand(net, x)
    # the bias row matters: the ReLU must see some negative and some positive pre-activations
    pre = torch.cat([x, torch.ones(11, 1, dtype=x.dtype)], 1) @ net.W
    assert (pre > 0).any() and (pre < 0).any()
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)


def test_bias_is_last_row_of_W():
    net = TwoLayerNet(d=4, m=8, k=1)
    with torch.no_grad():
        net.W.zero_()
        net.W[-1].fill_(1.0)  # bias only
        net.a.fill_(0.5)
    out = net(torch.randn(3, 4))
    torch.testing.assert_close(out, torch.full((3, 1), 8 * 0.5))


def test_mean_field_scales_output_by_one_over_m():
    torch.manual_seed(0)
    m = 50
    plain = TwoLayerNet(d=5, m=m, k=2, init="normal")
    mf = TwoLayerNet(d=5, m=m, k=2, init="normal", mean_field=True)
    mf.load_state_dict(plain.state_dict())
    x = torch.randn(9, 5)
    torch.testing.assert_close(mf(x), plain(x) / m)
    torch.testing.assert_close(mf(x), _by_hand(mf, x) / m)


def test_fan_in_init_bounds_and_initial_loss():
    torch.manual_seed(0)
    d, m = 40, 1000
    net = TwoLayerNet(d=d, m=m, k=1)  # fan_in is the default
    assert net.init == "fan_in"
    bw, ba = 1 / math.sqrt(d + 1), 1 / math.sqrt(m)
    assert net.W.abs().max() <= bw
    assert net.a.abs().max() <= ba
    # it is a uniform on the whole interval, not a narrower one: the extremes come close to the bounds
    assert net.W.abs().max() > 0.99 * bw and net.a.abs().max() > 0.98 * ba
    # U(-b, b) has std b/√3
    assert net.W.std().item() == pytest.approx(bw / math.sqrt(3), rel=0.03)
    assert net.a.std().item() == pytest.approx(ba / math.sqrt(3), rel=0.1)
    # on exp1-like data the initial MSE is O(1) (the wrong-axis Kaiming init gave 8–48, SPEC §1)
    t = SinCosRegression(n_samples=2000, seed=0).build()
    with torch.no_grad():
        mse = F.mse_loss(net(t["x_train"]), t["y_train"]).item()
    assert mse < 3.0


def test_kaiming_and_normal_init_std():
    torch.manual_seed(0)
    d, m = 40, 1000
    net = TwoLayerNet(d=d, m=m, k=1, init="kaiming")
    # 41 000 entries: the sample std is within ~1 % of σ; 5 % is far outside chance
    assert net.W.std().item() == pytest.approx(math.sqrt(2 / (d + 1)), rel=0.05)
    assert net.W.mean().abs().item() < 0.01
    assert net.a.std().item() == pytest.approx(math.sqrt(1 / m), rel=0.1)
    normal = TwoLayerNet(d=d, m=m, k=1, init="normal")
    assert normal.W.std().item() == pytest.approx(1.0, rel=0.05)
    # the public implementation's: Kaiming's 2/fan-in with the fan-in on the wrong axis (m for W, 1 for a); caught: the
    # right axes (√(2/41) for W), or a ~ N(0, 2/m)
    public = TwoLayerNet(d=d, m=m, k=1, init="public")
    assert public.W.std().item() == pytest.approx(math.sqrt(2 / m), rel=0.05)
    assert public.a.std().item() == pytest.approx(math.sqrt(2), rel=0.1)


def test_init_is_reproducible_under_a_seed():
    torch.manual_seed(3)
    a = TwoLayerNet(d=5, m=7)
    torch.manual_seed(3)
    b = TwoLayerNet(d=5, m=7)
    assert torch.equal(a.W, b.W) and torch.equal(a.a, b.a)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(d=40, m=0, k=1), "m"),
        (dict(d=40, m=-5, k=1), "m"),
        (dict(d=40, m=2.5, k=1), "m"),
        (dict(d=40, m=True, k=1), "m"),
        (dict(d=0, m=10, k=1), "d"),
        (dict(d=40, m=10, k=0), "k"),
    ],
)
def test_bad_sizes_raise_config_error_naming_the_setting(kwargs, name):
    with pytest.raises(GFConfigError) as info:
        TwoLayerNet(**kwargs)
    msg = str(info.value)
    assert f"model.net.{name}" in msg or f"net.init_args.{name}" in msg, msg
    assert "positive" in msg


def test_unknown_init_lists_the_allowed_values():
    with pytest.raises(GFConfigError) as info:
        TwoLayerNet(d=3, m=4, init="xavier")
    msg = str(info.value)
    assert "init" in msg and "xavier" in msg
    for allowed in ("fan_in", "kaiming", "normal"):
        assert allowed in msg
