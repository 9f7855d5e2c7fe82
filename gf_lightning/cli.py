"""``python -m gf_lightning {fit,validate,test} --config FILE``: LightningCLI with the optimizer injected from the config."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .data.base import TensorDataModule
from .errors import GFConfigError, GFStepError, NonFiniteError
from .module import GradientFlowModule
from .run_folder import claim_logger_versions


class OneLineParser(LightningArgumentParser):
    """A parser whose errors are one line on stderr and exit 2, without the usage dump (``--help`` still has it)."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        print(f"gf_lightning: error: {' '.join(line.strip() for line in str(message).splitlines() if line.strip())}",
              file=sys.stderr)
        raise SystemExit(2)


class GFLightningCLI(LightningCLI):
    """LightningCLI with a checkpoint every epoch (``last.ckpt``) and a progress bar that refreshes every few steps."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:04d}"})
        parser.set_defaults({"checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(TQDMProgressBar, "progress_bar")
        parser.set_defaults({"progress_bar.refresh_rate": 10})

    def instantiate_trainer(self, **kwargs):
        """Drop the default checkpoint and progress-bar callbacks where the trainer config switches them off."""
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if trainer_cfg.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if trainer_cfg.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not isinstance(c, TQDMProgressBar)]
        trainer = self._instantiate_trainer({**trainer_cfg, **kwargs}, callbacks)
        claim_logger_versions(trainer.loggers)  # each run its own version_N, even when several start at once
        return trainer


def _config_error_in(err: BaseException) -> GFConfigError | None:
    """The GFConfigError that ``err`` was raised while handling, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, GFConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def cli_main(args: list[str] | None = None, run: bool = True) -> GFLightningCLI | None:
    """Entry point; ``args`` as on the command line (tests pass a list). Known errors print one line and exit non-zero."""
    try:
        return GFLightningCLI(
            GradientFlowModule,
            TensorDataModule,
            parser_class=OneLineParser,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except (GFConfigError, FileNotFoundError) as err:
        print(f"gf_lightning: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as err:
        # jsonargparse wraps what a class raised while it was being built (the data module is an optional subclass)
        cause = _config_error_in(err)
        if cause is None:
            raise
        print(f"gf_lightning: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None
    except (NonFiniteError, GFStepError) as err:
        print(f"gf_lightning: {err}", file=sys.stderr)
        raise SystemExit(1) from None
