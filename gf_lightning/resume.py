"""A resume continues the same run: the settings that define a run are stored in every checkpoint and compared on
resume.

The settings that define a run are the model's and the data's (``model.*``, ``data.*``) and ``seed_everything``; where
the files are, how batches are handed to a call or evaluated (:data:`FREE`), how long and on what the run goes on
(``trainer.*``), and how it is checkpointed or shown may change freely. On ``fit --ckpt_path``:

- a checkpoint of another optimizer class, another network class, or parameters of other shapes is refused: its state
  cannot continue this run;
- other differing settings are refused, each named with both values, unless the command opts in with
  ``--resume_with_changes=true``; then the new values are used everywhere — the optimizer's loaded parameter groups take
  them too, instead of the checkpoint's — and the run's ``config.yaml`` and later checkpoints record them.

``validate``/``test --ckpt_path`` score a checkpoint on the data and model of its own run: another experiment's data, a
data seed that draws and splits other samples, another network setting are refused the same way (and with
``--resume_with_changes=true`` scored, with one line that says so); how it trained (:data:`SCORING_FREE`) may differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import GFConfigError

#: where a checkpoint keeps the settings of its run
CHECKPOINT_KEY = "gf_lightning_run"
#: dotted prefixes of settings that a resume may change: where the files are, how batches are handed over or evaluated
#: (the same steps either way), how often the loss is checked
FREE = ("data.init_args.data_dir", "data.init_args.download", "data.init_args.steps_per_call",
        "data.init_args.eval_batch_size", "model.check_finite_every_n_steps")
#: settings whose change leaves the checkpoint's state meaningless, opt-in or not
STRUCTURAL = ("model.optimizer.class_path", "model.net.class_path", "data.class_path")
#: settings that ``validate``/``test`` may change beside :data:`FREE`: how the run trained (the optimizer, the initial
#: weights, the training batches, the gradient's time scale); the seeds count as the data's seed (:data:`DATA_SEED`)
SCORING_FREE = ("model.optimizer.", "model.net.init_args.init", "model.particle_time", "data.init_args.batch_size",
                "data.init_args.seed", "seed_everything")
#: how a scoring check names the seed of the data's draw and split
DATA_SEED = "data.init_args.seed (else seed_everything)"


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = [v if isinstance(v, (bool, int, float, str, type(None))) else str(v) for v in value]
    else:
        out[prefix] = value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def run_settings(config: Any) -> dict[str, Any]:
    """The settings that define a run, as ``{"model.optimizer.init_args.lr": 0.01, …}`` from the CLI's config."""
    raw = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    out: dict[str, Any] = {}
    for section in ("model", "data"):
        _flatten(raw.get(section) or {}, section, out)
    out["seed_everything"] = raw.get("seed_everything")
    return {k: v for k, v in out.items() if not k.startswith(FREE)}


def _shape_differences(checkpoint: dict[str, Any], module: nn.Module) -> list[str]:
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if torch.is_tensor(v)}
    now = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return [f"{k} {saved.get(k)} in the checkpoint, {now.get(k)} here" for k in sorted(saved.keys() | now.keys())
            if saved.get(k) != now.get(k)]


def _group_keys(checkpoint: dict[str, Any]) -> set[str] | None:
    states = checkpoint.get("optimizer_states") or []
    if not states or not states[0].get("param_groups"):
        return None
    return set(states[0]["param_groups"][0]) - {"params"}


def check_resume(checkpoint: dict[str, Any], path: str, settings: dict[str, Any], module: nn.Module,
                 optimizer: torch.optim.Optimizer, allow_changes: bool) -> dict[str, tuple[Any, Any]]:
    """Compare ``checkpoint`` (loaded and checked from ``path`` by
    :func:`~gf_lightning.checkpointing.check_ckpt_path`) with this run (its ``settings``, its module, an optimizer built
    as it builds one). Raises :class:`GFConfigError` (one line) for what cannot continue; returns the changed settings,
    ``{name: (checkpoint's, this run's)}``, which are allowed only with ``allow_changes``."""
    if "state_dict" not in checkpoint:
        raise GFConfigError(f"ckpt_path={path!r} is not a Lightning checkpoint (no 'state_dict')")
    saved = checkpoint.get(CHECKPOINT_KEY)
    shapes = _shape_differences(checkpoint, module)
    if shapes:
        raise GFConfigError(f"ckpt_path={path!r} holds a network of another shape: {'; '.join(shapes[:3])}"
                            f"{' …' if len(shapes) > 3 else ''}; resume with the network it was trained with")
    keys, expected = _group_keys(checkpoint), set(optimizer.defaults)
    if keys is not None and (expected - keys or keys - expected - {"initial_lr"}):  # (a scheduler adds initial_lr)
        saved_class = (saved or {}).get("model.optimizer.class_path", "another optimizer")
        this_class = settings.get("model.optimizer.class_path", type(optimizer).__name__)
        raise GFConfigError(
            f"ckpt_path={path!r} holds the state of {saved_class}, and this run's optimizer is "
            f"{this_class}; an optimizer's state cannot continue another's: resume with the optimizer it "
            "was trained with"
        )
    if saved is None:  # a checkpoint from before the settings were stored: shapes and optimizer were all there was
        return {}
    changed = {k: (saved.get(k), settings.get(k)) for k in sorted(saved.keys() | settings.keys())
               if saved.get(k) != settings.get(k) and not k.startswith(FREE)}
    structural = [k for k in changed if k in STRUCTURAL]
    if structural:
        k = structural[0]
        raise GFConfigError(f"ckpt_path={path!r} was saved by a run with {k}={changed[k][0]}, and this run has "
                            f"{k}={changed[k][1]}; its state cannot continue this run")
    if changed and not allow_changes:
        raise GFConfigError(f"resuming from {path!r} with other settings than its run: {listed(changed)}. A resume "
                            "continues the same run: drop the changes, or pass --resume_with_changes=true to continue "
                            "with the new values")
    return changed


def listed(changed: dict[str, tuple[Any, Any]]) -> str:
    """``name: 0.01 in the checkpoint, 0.05 here; …``."""
    return "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} here" for k, (old, new) in changed.items())


def _data_seed(settings: dict[str, Any]) -> Any:
    """The seed of the data draw and split: the data's own, else the run's ``seed_everything``."""
    seed = settings.get("data.init_args.seed")
    return settings.get("seed_everything") if seed is None else seed


def check_scoring(checkpoint: dict[str, Any], path: str, settings: dict[str, Any], module: nn.Module,
                  allow_changes: bool) -> dict[str, tuple[Any, Any]]:
    """``validate``/``test --ckpt_path``: compare ``checkpoint`` with what this command scores it on (its ``settings``,
    its module). Raises :class:`GFConfigError` (one line) for a network of another shape, and for other data or model
    settings (:data:`SCORING_FREE` aside; the data's seed as :func:`_data_seed` resolves it) unless ``allow_changes``;
    returns the changed settings, ``{name: (checkpoint's, this command's)}``."""
    if "state_dict" not in checkpoint:
        raise GFConfigError(f"ckpt_path={path!r} is not a Lightning checkpoint (no 'state_dict')")
    shapes = _shape_differences(checkpoint, module)
    if shapes:
        raise GFConfigError(f"ckpt_path={path!r} holds a network of another shape: {'; '.join(shapes[:3])}"
                            f"{' …' if len(shapes) > 3 else ''}; score it with the network it was trained with")
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None:  # a checkpoint from before the settings were stored: its shapes are all there is to check
        return {}
    changed = {k: (saved.get(k), settings.get(k)) for k in sorted(saved.keys() | settings.keys())
               if saved.get(k) != settings.get(k) and not k.startswith(FREE + SCORING_FREE)}
    if _data_seed(saved) != _data_seed(settings):
        changed[DATA_SEED] = (_data_seed(saved), _data_seed(settings))
    if changed and not allow_changes:
        raise GFConfigError(f"scoring {path!r} on other data or another model than its run's: {listed(changed)}. "
                            "Its metrics would not be its run's: drop the changes, or pass --resume_with_changes=true "
                            "to score it with them")
    return changed


def override_optimizer_groups(checkpoint: dict[str, Any], changed: dict[str, tuple[Any, Any]]) -> None:
    """With ``--resume_with_changes``: the loaded optimizer groups take the new optimizer settings, not the saved
    ones."""
    prefix = "model.optimizer.init_args."
    new = {k[len(prefix):]: v for k, (_, v) in changed.items() if k.startswith(prefix)}
    for state in checkpoint.get("optimizer_states") or []:
        for group in state.get("param_groups", []):
            group.update({k: v for k, v in new.items() if k in group})
