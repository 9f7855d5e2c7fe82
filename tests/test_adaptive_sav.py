"""AdaptiveSAV (Ma, Mao & Shen 2024, Alg. 5: A-SAV, A-ResSAV, A-RelSAV) against a hand computation, its energy law, and
the conventions of the other energy methods.

1. the first three steps of each variant, with one and with two parameter groups, equal Alg. 5 computed here in plain
   Python floats (:func:`alg5_reference`, which shares no code with the library);
2. over random networks and step sizes ``Δt = 10^U(−4, 4)`` (float64), ``r`` never rises within a step,
   ``energy/modified`` never rises for ``vanilla`` and ``relax``, each move and ``r`` match ``m``, ``v`` kept by the
   test from the gradients the closure saw, SAV's energy identity holds with ``m̂`` and ``Δt̂``, nothing is counted as a
   violation and everything stays finite;
3. state round trips continue bit for bit (every convention of ``test_conventions.py`` runs on AdaptiveSAV in its
   table); a step
   that raises changes nothing;
4. two processes (gloo, DDP, half the batch each) equal one process on the whole batch;
5. bad settings are refused with one line that names them;
6. the command line trains with it and logs its scalars.
"""

from __future__ import annotations

import copy
import io
import math
import random
from pathlib import Path

import pytest
import test_conventions as conventions
import torch
from support import run_on_quadratic

from gf_lightning.errors import GFConfigError, GFStepError
from gf_lightning.optim import OPTIMIZERS, SAV, AdaptiveSAV

F64 = torch.float64
VARIANTS = ("vanilla", "restart", "relax")


def close(a: float, b: float, rtol: float = 1e-10, atol: float = 1e-14) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + atol


# ----------------------------------------------------------------------------------------------------------------------
# 1. the first steps against Alg. 5 by hand
# ----------------------------------------------------------------------------------------------------------------------
# L(w) = ½ wᵀPw + qᵀw + 1 + shiftₙ on w ∈ R³, split into the groups u = w[:2] and v = w[2:]; P SPD, L > 0 everywhere
P = ((2.0, 0.5, 0.1), (0.5, 1.5, 0.2), (0.1, 0.2, 1.0))
Q = (0.3, -0.2, 0.5)
W0 = ((0.5, -0.3), (0.8,))


def quadratic(w: list[list[float]], shift: float) -> tuple[float, list[list[float]]]:
    """The loss and its gradient (per group) at ``w``, in floats."""
    x = [*w[0], *w[1]]
    px = [math.fsum(P[i][j] * x[j] for j in range(3)) for i in range(3)]
    loss = 0.5 * math.fsum(a * b for a, b in zip(x, px)) + math.fsum(a * b for a, b in zip(Q, x)) + 1.0 + shift
    grad = [a + b for a, b in zip(px, Q)]
    return loss, [grad[:2], grad[2:]]


def alg5_reference(variant, lrs, steps, C, lam, betas=(0.9, 0.999), eps=1e-8, eta=0.99, shifts=None):
    """Alg. 5 as the spec page states it, on :func:`quadratic`, in Python floats: ``m`` a vector, ``v`` the scalar
    ``‖g‖²`` averaged, bias corrections, ``Δt̂_g = Δt_g/√(v̂ + ε)``, then SAV (Alg. 2, 3 or 4) with ``m̂`` for the
    gradient. The relaxation is SPEC §2's quadratic formula for ξ, ``D = Σ_g ‖Δw_g‖²/Δt̂_g``. Returns one dict per
    step."""
    b1, b2 = betas
    w = [list(g) for g in W0]
    m = [[0.0] * len(g) for g in W0]
    v, r, out = 0.0, None, []
    for n in range(steps):
        t = n + 1
        shift = shifts[n] if shifts else 0.0
        loss, grads = quadratic(w, shift)
        m = [[b1 * a + (1 - b1) * b for a, b in zip(mg, gg)] for mg, gg in zip(m, grads)]
        v = b2 * v + (1 - b2) * math.fsum(x * x for gg in grads for x in gg)
        m_hat = [[a / (1 - b1**t) for a in mg] for mg in m]
        v_hat = v / (1 - b2**t)
        dts = [dt / math.sqrt(v_hat + eps) for dt in lrs]
        g_tilde = [[a / (1 + dt * lam) for a in mg] for mg, dt in zip(m_hat, dts)]
        dt_s = math.fsum(dt * math.fsum(a * b for a, b in zip(mg, gt)) for dt, mg, gt in zip(dts, m_hat, g_tilde))
        r_hat = math.sqrt(loss + C)
        rose = r is not None and variant == "restart" and r_hat > r
        if r is None or variant == "restart":
            r = r_hat
        r_new = r / (1 + dt_s / (2 * (loss + C)))
        phi = r_new / r if variant == "restart" else r_new / r_hat
        w_new = [[a - dt * phi * b for a, b in zip(wg, gt)] for wg, gt, dt in zip(w, g_tilde, dts)]
        xi = None
        if variant == "relax":
            hat_next = math.sqrt(quadratic(w_new, shift)[0] + C)  # the same mini-batch
            d = math.fsum(math.fsum((a - b) ** 2 for a, b in zip(wn, wo)) / dt for wn, wo, dt in zip(w_new, w, dts))
            qa, qb, qc = (r_new - hat_next) ** 2, 2 * hat_next * (r_new - hat_next), hat_next**2 - r_new**2 - eta * d
            xi = 0.0 if qa == 0 else max(0.0, (-qb - math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa))
            xi = min(xi, 1.0)
            r_new = xi * r_new + (1 - xi) * hat_next
        out.append(dict(w=w_new, m=m, v=v, r=r_new, loss=loss, xi=xi, rose=rose,
                        eff=phi * dts[0] / (1 + dts[0] * lam), modified=r_new**2 - C))
        w, r = w_new, r_new
    return out


def run_library(variant, lrs, steps, shifts=None, **kw):
    """The same problem through AdaptiveSAV (support's ``run_on_quadratic``); ``m`` is each parameter's ``exp_avg``."""
    out, calls = run_on_quadratic(AdaptiveSAV, (P, Q, W0), lrs, steps, shifts, variant=variant, **kw)
    for o in out:
        o["m"] = [state["exp_avg"] for state in o.pop("param_state")]
        o["stats"] = {k: float(t) for k, t in o["stats"].items()}
    return out, calls


STEP_CASES = [  # (variant, lrs, settings): relax cases where 0 < ξ < 1 happens and where ξ = 0 does
    ("vanilla", (0.3,), dict(C=1.0, lam=4.0)),
    ("vanilla", (2.0,), dict(C=0.5, lam=0.0, shifts=(1.0, 0.0, 2.0))),
    ("restart", (0.3,), dict(C=1.0, lam=4.0, shifts=(0.0, 1.0, 0.5))),
    ("relax", (0.3,), dict(C=1.0, lam=0.5)),
    ("relax", (2.0,), dict(C=0.5, lam=0.0, shifts=(1.0, 0.0, 2.0))),
    ("relax", (1.0,), dict(C=1.0, lam=1.0, betas=(0.5, 0.8), eps=0.5)),
    # per-group step sizes: Δt̂_g = Δt_g/√(v̂ + ε) with one v̂ over both groups
    ("vanilla", (0.05, 0.4), dict(C=1.0, lam=4.0)),
    ("restart", (0.05, 0.4), dict(C=1.0, lam=1.0, shifts=(0.0, 1.0, 0.5))),
    ("relax", (0.5, 2.0), dict(C=0.5, lam=0.0, shifts=(1.0, 0.0, 2.0))),
    ("vanilla", (0.5, 0.1), dict(C=1.0, lam=0.5, betas=(0.0, 0.5), eps=1e-3)),
]


def step_id(case) -> str:
    variant, lrs, kw = case
    extra = "".join(f"-{k}{kw[k]}" for k in ("betas", "eps", "shifts") if k in kw)
    return f"{variant}-dt{'/'.join(map(str, lrs))}{extra}"


@pytest.mark.parametrize("variant,lrs,kw", STEP_CASES, ids=[step_id(c) for c in STEP_CASES])
def test_first_steps_equal_alg5_by_hand(variant, lrs, kw):
    """Three steps: the weights, ``m`` (``exp_avg``), ``v``, ``r``, ``energy/modified = r² − C``, ``energy/true``,
    ``optim/effective_lr = φ Δt̂/(1 + Δt̂ λ)``, ξ, the counters and the closure calls equal the hand computation.
    Breakage seen to fail here: the gradient used in place of ``m̂`` (from step 2), ``S`` from the gradient, a
    per-coordinate second moment (``v`` of the mean square), no bias correction, ``Δt`` in ``1 + Δt λ`` in place of
    ``Δt̂``, relax's ``D`` divided by ``Δt`` in place of ``Δt̂``, one ``Δt̂`` for both groups."""
    kw = dict(kw)
    shifts = kw.pop("shifts", None)
    dts = list(lrs) * 2 if len(lrs) == 1 else list(lrs)
    ref = alg5_reference(variant, dts, 3, shifts=shifts, **kw)
    got, calls = run_library(variant, lrs, 3, shifts=shifts, **kw)
    assert calls == 3 * (2 if variant == "relax" else 1)
    rises = 0
    for n, (r, o) in enumerate(zip(ref, got)):
        where = (n, o, r)
        assert all(close(a, b) for ga, gb in zip(o["w"], r["w"]) for a, b in zip(ga, gb)), where
        assert all(close(a, b) for ga, gb in zip(o["m"], r["m"]) for a, b in zip(ga, gb)), where
        assert close(math.exp(o["state"]["log_v"].item()), r["v"]), where
        assert close(o["state"]["log_r"].item(), math.log(r["r"])), where
        assert o["state"]["step"].item() == n + 1
        stats = o["stats"]
        assert close(stats["energy/modified"], r["modified"], rtol=1e-9), where
        assert close(stats["energy/true"], r["loss"], rtol=1e-14), where
        assert close(stats["optim/effective_lr"], r["eff"]), where
        assert stats["energy/violations"] == 0
        rises += r["rose"]
        if variant == "restart":
            assert stats["energy/restart_rises"] == rises
        else:
            assert "energy/restart_rises" not in stats
        if variant == "relax":
            assert abs(stats["optim/xi"] - r["xi"]) <= 1e-9, where
        else:
            assert "optim/xi" not in stats


def test_step_cases_cover_what_they_claim():
    """The cases above exercise 0 < ξ < 1 and ξ = 0 (relax), a restart above the carried ``r``, and ``m̂ ≠ g`` (if the
    momentum cancelled out on this problem, using the gradient for ``m̂`` would pass unseen)."""
    xis, rose = [], False
    for variant, lrs, kw in STEP_CASES:
        kw = dict(kw)
        shifts = kw.pop("shifts", None)
        ref = alg5_reference(variant, list(lrs) * 2 if len(lrs) == 1 else list(lrs), 3, shifts=shifts, **kw)
        xis += [s["xi"] for s in ref if s["xi"] is not None]
        rose |= any(s["rose"] for s in ref)
    assert any(0.0 < xi < 1.0 for xi in xis) and any(xi == 0.0 for xi in xis), xis
    assert rose
    ref = alg5_reference("vanilla", [0.3, 0.3], 2, C=1.0, lam=4.0)
    _, grads = quadratic(ref[0]["w"], 0.0)
    m_hat = [a / (1 - 0.9**2) for mg in ref[1]["m"] for a in mg]
    assert max(abs(a - b) for a, b in zip(m_hat, [x for g in grads for x in g])) > 1e-2


def test_one_group_of_any_split_is_alg5():
    """Splitting the parameters into groups of the same ``lr`` changes nothing (``v̂`` is global, ``Δt̂ Ŝ`` sums the
    groups): the two-group run equals the one-group run. Breakage: ``v`` kept per group."""
    one, _ = run_library("relax", (0.7,), 4, C=1.0, lam=1.0)
    two, _ = run_library("relax", (0.7, 0.7), 4, C=1.0, lam=1.0)
    for a, b in zip(one, two):
        assert all(close(x, y, rtol=1e-13) for ga, gb in zip(a["w"], b["w"]) for x, y in zip(ga, gb)), (a["w"], b["w"])


# ----------------------------------------------------------------------------------------------------------------------
# 2. the energy law over random cases
# ----------------------------------------------------------------------------------------------------------------------
def random_net(rng: random.Random) -> tuple[torch.nn.Module, int, int]:
    d, k, m = rng.randint(1, 6), rng.randint(1, 3), rng.randint(2, 24)
    torch.manual_seed(rng.randrange(2**31))
    act = rng.choice((torch.nn.Tanh, torch.nn.ReLU, torch.nn.Sigmoid))
    net = torch.nn.Sequential(torch.nn.Linear(d, m), act(), torch.nn.Linear(m, k)).to(F64)
    with torch.no_grad():  # initial losses from ~1e-3 to ~1e3
        net[2].weight.mul_(10 ** rng.uniform(-1, 1))
    return net, d, k


def run_random_case(variant: str, seed: int, steps: int = 6) -> list[str]:
    """One random network, Δt, C, λ and β; a fresh mini-batch each step. The test keeps its own ``m`` and ``v`` from the
    gradients the closure saw (float64 tensors), and checks each step against them. Returns what failed."""
    rng = random.Random(seed)
    net, d, k = random_net(rng)
    params = list(net.parameters())
    dt = 10 ** rng.uniform(-4, 4)
    C, lam = 10 ** rng.uniform(-2, 2), rng.choice((0.0, 10 ** rng.uniform(-2, 1)))
    b1, b2 = rng.choice(((0.9, 0.999), (rng.uniform(0, 0.99), rng.uniform(0, 0.999))))
    eta, ulp = 0.99, 2.0**-52
    opt = AdaptiveSAV(params, lr=dt, C=C, lam=lam, variant=variant, betas=(b1, b2), eta=eta)
    scale = 10 ** rng.uniform(-1, 1.5)
    gen = torch.Generator().manual_seed(seed)
    failures, m, v, previous = [], [torch.zeros_like(p) for p in params], 0.0, None
    for n in range(steps):
        x = torch.randn(16, d, generator=gen, dtype=F64)
        y = scale * torch.randn(16, k, generator=gen, dtype=F64)
        seen = []

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            seen.append((loss.item(), [p.grad.clone() for p in params]))
            return loss

        before = [p.detach().clone() for p in params]
        ell = opt.global_state["log_r"].item() if "log_r" in opt.global_state else None
        opt.step(closure)
        where = f"seed {seed} step {n}: {variant} dt={dt:.3g} C={C:.3g} lam={lam:.3g} betas=({b1:.3g}, {b2:.3g})"
        stats = {key: float(value) for key, value in opt.stats.items()}
        if not (all(torch.isfinite(p).all() for p in params) and all(map(math.isfinite, stats.values()))):
            failures.append(f"{where}: not finite {stats}")
            break
        new = opt.global_state["log_r"].item()
        if stats["energy/violations"] != 0:
            failures.append(f"{where}: violations {stats['energy/violations']}")
        if variant != "restart" and previous is not None and stats["energy/modified"] > previous:
            failures.append(f"{where}: energy/modified rose {previous!r} -> {stats['energy/modified']!r}")
        previous = stats["energy/modified"]

        # Alg. 5 from the gradients the closure saw, independently of the optimizer
        loss, grads = seen[0]
        t = n + 1
        m = [b1 * a + (1 - b1) * g for a, g in zip(m, grads)]
        v = b2 * v + (1 - b2) * math.fsum(float(g.square().sum()) for g in grads)
        m_hat = [a / (1 - b1**t) for a in m]
        dt_hat = dt / math.sqrt(v / (1 - b2**t) + 1e-8)
        c = dt_hat / (1 + dt_hat * lam)
        dt_s = c * math.fsum(float(a.square().sum()) for a in m_hat)
        log_hat = 0.5 * math.log(loss + C)
        start = log_hat if ell is None or variant == "restart" else ell
        if new > start:
            failures.append(f"{where}: log r rose {start!r} -> {new!r}")
        r, rn = math.exp(start), math.exp(new)
        r_tilde = r / (1 + dt_s / (2 * (loss + C)))
        phi = r_tilde / (r if variant == "restart" else math.exp(log_hat))
        move = [p.detach() - b for p, b in zip(params, before)]
        moved = math.fsum(float(a.square().sum()) for a in move)
        w_norm = math.sqrt(math.fsum(float(b.square().sum()) for b in before))
        # wⁿ⁺¹ − wⁿ = −φ Δt̂ m̂/(1 + Δt̂ λ), each coordinate to a rounding of the weights
        error = math.sqrt(math.fsum(float((a + phi * c * h).square().sum()) for a, h in zip(move, m_hat)))
        expected = phi * c * math.sqrt(math.fsum(float(h.square().sum()) for h in m_hat))
        if error > 1e-9 * expected + 4 * ulp * (w_norm + expected):
            failures.append(f"{where}: move off by {error!r} of {expected!r}")
        # ‖Δw‖² from weights of norm ‖w‖: each coordinate's move is known to ~ε‖w‖
        slack = 8 * ulp * w_norm * (2 * math.sqrt(moved) + 8 * ulp * w_norm) / dt_hat
        if variant == "relax":  # rⁿ⁺¹ = min(r̂(L(wⁿ⁺¹)), √(r̃² + η D)) ≤ √(r² − (1 − η) D), D = ‖Δw‖²/Δt̂
            hat_next = math.sqrt(seen[1][0] + C)
            bound = r_tilde**2 + eta * min(moved / dt_hat, r * r - r_tilde**2)
            want = min(hat_next**2, bound)
            if abs(rn * rn - want) > 1e-10 * r * r + eta * slack:
                failures.append(f"{where}: relax (r⁺)² = {rn * rn!r} != {want!r}")
            if rn * rn > r * r - (1 - eta) * moved / dt_hat + 1e-10 * r * r + slack:
                failures.append(f"{where}: relax inequality (r⁺)² = {rn * rn!r} > r² − (1 − η)D")
        else:  # r̃, and SAV's identity with m̂ and Δt̂: r² − (rⁿ⁺¹)² = (1/Δt̂ + λ)‖Δw‖² + (rⁿ⁺¹ − r)²
            if not close(rn, r_tilde, rtol=1e-10, atol=0.0):
                failures.append(f"{where}: r⁺ = {rn!r} != r̃ = {r_tilde!r}")
            lhs, rhs = (r - rn) * (r + rn), (1 / dt_hat + lam) * moved + (rn - r) ** 2
            if abs(lhs - rhs) > 1e-10 * r * r + (1 + dt_hat * lam) * slack:
                failures.append(f"{where}: energy identity {lhs!r} != {rhs!r}")
    return failures


@pytest.mark.parametrize("variant", VARIANTS)
def test_energy_never_rises_over_random_cases(variant):
    """100 random networks (float64), ``Δt = 10^U(−4, 4)``, random C, λ, β, six mini-batches each: ``r`` never rises
    above where the step started (the carried ``r``, or the restarted one), ``energy/modified`` never rises from step to
    step (vanilla, relax), no violation is counted, everything is finite; and against ``m``, ``v`` kept by the test from
    the gradients the closure saw, each move is ``−φ Δt̂ m̂/(1 + Δt̂ λ)``, ``rⁿ⁺¹ = r̃`` with SAV's identity ``r² −
    (rⁿ⁺¹)² = (1/Δt̂ + λ)‖Δw‖² + (rⁿ⁺¹ − r)²`` (vanilla, restart), and relax's ``rⁿ⁺¹ = min(r̂, √(r̃² + ηD))`` and
    ``(rⁿ⁺¹)² ≤ r² − (1 − η)D``, ``D = ‖Δw‖²/Δt̂``. Breakage seen to fail here: the gradient in place of ``m̂``, ``S``
    formed from the gradient while the move follows ``m̂``, a per-coordinate second moment, no bias correction, ``Δt``
    in ``1 + Δt λ``, relax's ``D`` divided by ``Δt`` in place of ``Δt̂``."""
    failures = []
    for seed in range(100):
        failures += run_random_case(variant, seed)
    assert not failures, "\n".join(failures[:10])


# ----------------------------------------------------------------------------------------------------------------------
# 3. state round trips, and the conventions every energy method keeps
# ----------------------------------------------------------------------------------------------------------------------
CASES = [conventions.Case(AdaptiveSAV, dict(lr=0.05, variant=v),
                          dict(lr=0.3, C=7.0, lam=0.5, betas=(0.5, 0.9), eps=1e-3, eta=0.5,
                               variant="restart" if v != "restart" else "vanilla"))
         for v in VARIANTS]
table = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


@table
def test_resume_from_a_saved_file_continues_bit_for_bit(case):
    """7 steps, ``torch.save`` of the optimizer's state to a file, ``torch.load`` into a fresh network and an optimizer
    built with other settings, 7 more == 14 uninterrupted steps, bit for bit: weights, ``exp_avg``, ``log_v``,
    ``log_r``, the counters, the stats. Breakage seen to fail here: ``v`` kept on the instance instead of in the state,
    and the step counter of the bias corrections restarting at 1 after a load."""
    ref_model = conventions.make_net(0)
    ref_opt = case.make(ref_model.parameters())
    conventions.train(case, ref_model, ref_opt, 14)

    model = conventions.make_net(0)
    opt = case.make(model.parameters())
    conventions.train(case, model, opt, 7)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    fresh_model = conventions.make_net(1)
    fresh_model.load_state_dict(saved["model"])
    fresh_opt = case.make(fresh_model.parameters(), **case.other)
    fresh_opt.load_state_dict(saved["opt"])
    conventions.train(case, fresh_model, fresh_opt, 7, start=7)

    conventions.assert_same(conventions.params_of(fresh_model), conventions.params_of(ref_model))
    conventions.assert_same_stats(fresh_opt.stats, ref_opt.stats)
    for p, q in zip(fresh_model.parameters(), ref_model.parameters()):
        assert set(fresh_opt.state[p]) == set(ref_opt.state[q])
        for key, value in ref_opt.state[q].items():
            got = fresh_opt.state[p][key]
            assert got.dtype == value.dtype and torch.equal(got, value), key
    assert fresh_opt.global_state["step"].item() == 14
    assert fresh_opt.param_groups[0]["variant"] == case.kwargs["variant"]  # the loaded settings, not the constructor's


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_step_that_raises_changes_nothing(variant):
    """A step whose loss has ``L + C ≤ 0`` raises GFStepError and leaves the weights, ``m``, ``v``, ``r`` and the
    counters as they were: the run then continues exactly as one that never took it. Breakage seen to fail here: ``m``
    updated in place (``lerp_``) before the step could fail, which counted the refused gradient twice."""
    case = conventions.Case(AdaptiveSAV, dict(lr=0.05, C=1.0, variant=variant))
    ref_model, model = conventions.make_net(0), conventions.make_net(0)
    ref_opt, opt = case.make(ref_model.parameters()), case.make(model.parameters())
    conventions.train(case, ref_model, ref_opt, 4)
    conventions.train(case, model, opt, 2)
    state = copy.deepcopy(opt.state_dict())
    x, y = conventions.BATCHES[2]

    def bad():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y) - 5.0
        loss.backward()
        return loss

    with pytest.raises(GFStepError, match="L \\+ C > 0"):
        opt.step(bad)
    after = opt.state_dict()
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            assert torch.equal(after["state"][pid][key], value), (pid, key)
    conventions.train(case, model, opt, 2, start=2)
    conventions.assert_same(conventions.params_of(model), conventions.params_of(ref_model))
    conventions.assert_same_stats(opt.stats, ref_opt.stats)


def test_registered_and_a_subclass_of_sav():
    """``OPTIMIZERS["adaptive_sav"]`` names the class (scripts, run folders, the CLI's help); it is SAV with the
    adaptive step, so SAV's ``r = √(L + C)``, its ``energy/modified = r² − C`` and its ``L + C > 0`` check are SAV's
    own."""
    assert OPTIMIZERS["adaptive_sav"] is AdaptiveSAV and issubclass(AdaptiveSAV, SAV)
    assert AdaptiveSAV.variants == VARIANTS
    w = torch.nn.Parameter(torch.ones(2))
    assert AdaptiveSAV([w]).defaults == dict(lr=0.01, C=100.0, lam=4.0, variant="relax", betas=(0.9, 0.999), eps=1e-8,
                                             eta=0.99, particles=1)


# ----------------------------------------------------------------------------------------------------------------------
# 5. bad settings
# ----------------------------------------------------------------------------------------------------------------------


def test_shared_settings_are_refused_per_group():
    """``betas``, ``eps``, ``C``, ``variant``, ``eta`` belong to the whole optimizer (``v`` and ``r`` are one scalar
    each): a group that sets another value is refused; ``lr`` and ``lam`` may differ per group, and are checked
    there."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    for key, value in (("betas", (0.5, 0.9)), ("eps", 1e-3), ("C", 3.0), ("variant", "vanilla"), ("eta", 0.5)):
        with pytest.raises(GFConfigError, match=f"{key} is a setting of the whole optimizer"):
            AdaptiveSAV([{"params": [a]}, {"params": [b], key: value}])
    with pytest.raises(GFConfigError, match="lr must be a finite number > 0"):
        AdaptiveSAV([{"params": [a]}, {"params": [b], "lr": -1.0}])
    opt = AdaptiveSAV([{"params": [a]}, {"params": [b], "lr": 0.5, "lam": 0.0}])
    assert opt.param_groups[1]["lr"] == 0.5


# ----------------------------------------------------------------------------------------------------------------------
# 6. the command line
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:LightningCLI.s args parameter is intended")
def test_command_line_trains_and_logs(cli_run):
    """``fit --model.optimizer=gf_lightning.optim.AdaptiveSAV … variant=relax`` on a small exp3: it trains (the loss
    falls), logs ``energy/modified`` at every step, never rising (across mini-batches too: relax's ``r`` never rises),
    with ``energy/violations`` 0 and ``optim/xi``, and names the run folder after the registry name. Breakage seen to
    fail
    here: the class missing from ``OPTIMIZERS`` (the run folder was ``adaptivesav-relax``)."""
    from gf_lightning.study.events import read_scalars, values

    cli = cli_run("exp3_sav", "--model.optimizer=gf_lightning.optim.AdaptiveSAV", "--model.optimizer.init_args.lr=1.0",
                  "--model.optimizer.init_args.variant=relax", "--data.init_args.n_samples=640",
                  "--model.net.init_args.m=64", "--trainer.log_every_n_steps=1", epochs=4)
    assert type(cli.trainer.optimizers[0]).__name__ == "AdaptiveSAV"
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir.parent.name == "adaptive_sav-relax", log_dir
    read = read_scalars(log_dir)
    scalars = {tag: values(read, tag) for tag in read}
    modified = scalars["energy/modified"]
    assert len(modified) == cli.trainer.global_step >= 8
    assert all(b <= a for a, b in zip(modified, modified[1:])), modified
    assert set(scalars["energy/violations"]) == {0.0}
    assert "optim/xi" in scalars and "optim/effective_lr" in scalars
    train = scalars["train/loss"]
    assert all(map(math.isfinite, train)) and train[-1] < train[0], train
