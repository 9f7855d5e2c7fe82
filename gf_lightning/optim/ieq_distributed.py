"""IEQ under ``torch.distributed`` (DDP), apart from the solves: what a rank keeps of the global solve (``"global"``:
every rank gathers the global residual, :func:`~.distributed.gather_rows`, and solves the global system itself), and
what the ranks exchange after each solved its own block (``"block"``). One process is the global case of one rank.
The protocol: docs/ieq.md.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from .distributed import Gathered, global_max_, global_sum_
from .ieq_solve import Solution


def keep_share(sol: Solution, rhs: Tensor, gathered: Gathered | None, dtype: torch.dtype) -> Solution:
    """The global solve's norms (of ``rhs``, every rank's residual, and of the whole ``qⁿ⁺¹``), and this rank's share
    of ``qⁿ⁺¹`` (all of it in one process: ``gathered`` is ``None``)."""
    before, after = torch.linalg.vector_norm(torch.stack([rhs, sol.q_new]), dim=1, dtype=dtype).unbind()
    share = sol.q_new if gathered is None else sol.q_new[gathered.offset : gathered.offset + gathered.count]
    return replace(sol, q_new=share, entries=float(rhs.numel()), norm_before=before,
                   norm_after=torch.where(sol.failed, before, after))


def reduce_block(sol: Solution, q_flat: Tensor, dtype: torch.dtype, paths_may_differ: bool) -> Solution:
    """This rank's solve with the global batch's norms, entries, failure and safeguard (one all-reduce), and — when
    ``paths_may_differ`` (the ranks' ``N`` may differ on an epoch's last batch, and with it their path) — the slowest
    rank's CG figures (one more small all-reduce and host sync; every rank takes part)."""
    size = torch.tensor(float(q_flat.numel()), dtype=dtype, device=q_flat.device)
    rescaled = torch.zeros((), dtype=torch.bool, device=q_flat.device) if sol.rescaled is None else sol.rescaled
    sums = global_sum_(torch.stack([q_flat.square().sum(dtype=dtype), sol.q_new.square().sum(dtype=dtype),
                                    sol.failed.to(dtype), rescaled.to(dtype), size]))
    before, after, failed = sums[0].sqrt(), sums[1].sqrt(), sums[2] > 0
    out = replace(sol, failed=failed, rescaled=sums[3] > 0, entries=sums[4], norm_before=before,
                  norm_after=torch.where(failed, before, after))
    if paths_may_differ:
        local = [float(sol.cg), float(sol.cg_iters or 0), float(sol.cg_residual or 0.0)]
        worst = global_max_(torch.tensor(local, dtype=dtype, device=q_flat.device)).tolist()
        if worst[0] > 0:
            out = replace(out, solver="cg", cg_iters=int(worst[1]), cg_residual=worst[2])
        else:
            out = replace(out, cg_iters=None, cg_residual=None)
    return out
