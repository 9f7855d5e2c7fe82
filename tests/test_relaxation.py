"""The relaxation (Ma, Mao & Shen 2024, Alg. 4) against an independent reference in 200-bit arithmetic.

The reference solves Alg. 4 as it is stated — the smallest ``ξ ∈ [0, 1]`` with ``(ξ r̃ + (1 − ξ) r̂)² ≤ r̃² + η D`` — as
a quadratic in ``ζ = 1 − ξ`` (``Δ²ζ² + 2 r̃ Δ ζ − η D ≤ 0``, ``Δ = r̂ − r̃``), in mpmath at 200 bits, whose exponent
range has no limit: ``r = e^{−10⁸}`` is an ordinary number there (``references.relax_reference``). It shares no code and
no formula with ``logspace.relax``.

Breakage these tests were checked against: the textbook quadratic formula in float64 (the code before the closed form:
off by up to 4.0 in log r), and a final ``min(…, log rⁿ)`` that hides a rise.
"""

from __future__ import annotations

import math
import random

import mpmath
import pytest
import torch
from references import relax_reference

from gf_lightning.optim import SAV, ExpSAV


def random_inputs(rng: random.Random):
    """Inputs across every regime: log r from −1e8 (a collapsed r) to 1e4 (ExpSAV at a large loss), r̃ just below or far
    below rⁿ, r̂ far above or below, ‖Δw‖²/Δt anywhere from negligible to dominant."""
    log_old = rng.choice((-1e8, -3e4, -50.0, 0.0, 3.0, 700.0, 1e4)) + rng.uniform(-1, 1)
    log_tilde = log_old - 10 ** rng.uniform(-14, 5)
    log_hat = rng.choice((log_tilde, log_old)) + rng.choice((1.0, -1.0)) * 10 ** rng.uniform(-6, 8)
    log_moved = 2 * log_tilde + rng.uniform(-40, 40) if rng.random() < 0.9 else -math.inf
    eta = rng.choice((0.99, 1.0, 0.5, 1e-3))
    return log_old, log_tilde, log_hat, log_moved, eta


def test_relax_matches_the_reference_over_every_regime():
    from gf_lightning.optim.logspace import relax

    rng = random.Random(0)
    worst = 0.0
    for case in range(3000):
        args = random_inputs(rng)
        got = relax(*args)
        ref_log, ref_xi = relax_reference(*args)
        err = abs(got.log_r - float(ref_log))
        worst = max(worst, err)
        assert err <= 1e-6, (case, args, got, float(ref_log))
        # ξ = expm1(ℓⁿ⁺¹ − ℓ̂)/expm1(ℓ̃ − ℓ̂): the ℓ are floats, known to a few ulp(ℓ) = 2⁻⁵²|ℓ| each
        xi_tol = 1e-9 + 1e-14 * max(abs(args[1]), abs(args[2])) / max(abs(args[2] - args[1]), 1e-300)
        assert abs(got.xi - float(ref_xi)) <= xi_tol, (case, args, got, float(ref_xi))
        assert got.log_r <= args[0] + 8 * 2**-52 * (1 + abs(args[0])), (case, args, got)  # rⁿ⁺¹ ≤ rⁿ, to rounding
    print(f"relax: worst |log r − reference| over 3000 cases: {worst:.3g}")


# ----------------------------------------------------------------------------------------------------------------------
# end to end: the optimizer's log r, step after step, against the scheme recomputed in 200 bits from the same inputs
# ----------------------------------------------------------------------------------------------------------------------
def one_step_reference(method, variant, log_r, loss, g2, loss_next, dt, C, lam, eta):
    """One step of SAV / ExpSAV (vanilla or relax) in 200 bits from ``ℓⁿ``, ``L(wⁿ)``, ``‖g‖²`` and ``L(wⁿ⁺¹)``."""
    dt, C, lam, loss, g2 = (mpmath.mpf(v) for v in (dt, C, lam, loss, g2))
    r = mpmath.exp(mpmath.mpf(log_r))
    c = dt / (1 + dt * lam)
    if method == "sav":
        r_hat, kappa = mpmath.sqrt(loss + C), 2 * (loss + C)
    else:
        r_hat, kappa = C * mpmath.exp(loss), r
    r_tilde = r / (1 + c * g2 / kappa)
    if variant == "vanilla":
        return mpmath.log(r_tilde)
    moved = (r_tilde / r_hat * c) ** 2 * g2 / dt
    loss_next = mpmath.mpf(loss_next)
    r_hat_next = mpmath.sqrt(loss_next + C) if method == "sav" else C * mpmath.exp(loss_next)
    log_moved = float(mpmath.log(moved)) if moved > 0 else -math.inf
    return relax_reference(
        float(mpmath.log(r)), float(mpmath.log(r_tilde)), float(mpmath.log(r_hat_next)), log_moved, eta
    )[0]


def run_recorded(cls, variant, dt, C, lam, problem, steps, seed):
    """A two-layer tanh regression in float64, its loss scaled by ``scale``, weights drawn with ``std``, and targets
    shifted by ``noise·sin(7n)`` at step ``n`` (a new mini-batch each step: the loss may rise while r does not).
    Per step: ``ℓⁿ`` before it, and (L, ‖g‖²) of each closure call."""
    scale, std, noise = problem
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 3, generator=g, dtype=torch.float64), torch.randn(32, 1, generator=g, dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(torch.float64)
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std)
    opt = cls(model.parameters(), lr=dt, C=C, lam=lam, variant=variant)
    calls, step = [], [0]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y + noise * math.sin(7.0 * step[0])) * scale
        loss.backward()
        calls.append((loss.item(), math.fsum(float(p.grad.double().square().sum()) for p in model.parameters())))
        return loss

    records = []
    for _ in range(steps):
        before = opt.global_state[opt.aux_key].item() if opt.global_state else None
        calls.clear()
        opt.step(closure)
        step[0] += 1
        records.append((before, list(calls), opt.global_state[opt.aux_key].item()))
    return records


E2E = [(SAV, "sav", 1.0, 1.0), (ExpSAV, "expsav", 1.0, 0.0)]
#: (loss scale, weight std, mini-batch noise): large losses, a noisy small one, large and noisy
PROBLEMS = [(3.0, 1.5, 0.0), (1.0, 1.0, 0.3), (30.0, 3.0, 1.0)]


@pytest.mark.parametrize("variant", ["vanilla", "relax"])
@pytest.mark.parametrize("cls,method,C,lam", E2E, ids=["SAV", "ExpSAV"])
def test_log_r_matches_the_scheme_in_high_precision(cls, method, C, lam, variant):
    """Δt from 0.1 to 1e4, 40 steps each on three problems: ExpSAV at Δt ≥ 1e3 collapses (log r doubles toward −∞ and
    passes −1e8); every step's log r stays within 1e-6 of the 200-bit scheme fed the same inputs (relative 1e-14 where
    |log r| > 1e8, the float's own resolution)."""
    worst, worst_rel, deepest = 0.0, 0.0, 0.0
    runs = [(dt, problem) for dt in (0.1, 1.0, 10.0, 100.0, 1e3, 1e4) for problem in PROBLEMS]
    for i, (dt, problem) in enumerate(runs):
        records = run_recorded(cls, variant, dt, C, lam, problem, steps=40, seed=i)
        for n, (before, calls, after) in enumerate(records):
            if before is None:  # r⁰ = r̂(L(w⁰))
                before = 0.5 * math.log(calls[0][0] + C) if method == "sav" else calls[0][0] + math.log(C)
            if not math.isfinite(before):
                break
            (loss, g2), loss_next = calls[0], calls[1][0] if variant == "relax" else None
            ref = float(one_step_reference(method, variant, before, loss, g2, loss_next, dt, C, lam, 0.99))
            err = abs(after - ref)
            if abs(ref) <= 1e8:
                worst = max(worst, err)
            else:
                worst_rel = max(worst_rel, err / abs(ref))
            deepest = min(deepest, after)
            assert err <= 1e-6 * max(1.0, 1e-8 * abs(ref)), (dt, problem, n, before, after, ref)
    if method == "expsav":
        assert deepest < -1e8, deepest  # the collapsed regime was reached and checked
    print(
        f"{method}-{variant}: worst |log r − reference| {worst:.3g} where |log r| ≤ 1e8, relative {worst_rel:.3g} "
        "beyond; "
        f"deepest log r {deepest:.3g}"
    )
