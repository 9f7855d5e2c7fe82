"""``python -m gf_lightning {fit,validate,test} --config FILE``: LightningCLI with the optimizer injected from the config."""

from __future__ import annotations

import sys

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from .checkpointing import AtomicModelCheckpoint, FiniteCheckpointGuard, check_ckpt_path, with_safe_checkpoint_io
from .data.base import TensorDataModule
from .errors import CheckpointWriteError, GFConfigError, GFStepError, NonFiniteError
from .module import GradientFlowModule
from .resume import check_resume, run_settings
from .run_folder import claim_logger_versions
from .validation import check_config_files, check_output_folders, check_trainer, one_line


class OneLineParser(LightningArgumentParser):
    """A parser whose errors are one line on stderr and exit 2, without the usage dump (``--help`` still has it)."""

    #: the arguments of the parse under way: a nested parser names ``lr`` where the command line said
    #: ``--model.optimizer.init_args.lr``, and the message names the latter
    _args: list[str] = []

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # a misspelled key is refused, not taken for a longer one it begins
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        _refuse(one_line(str(message), OneLineParser._args, _known_keys(self)))

    def parse_args(self, args=None, *rest, **kwargs):  # type: ignore[override]
        """Parse, then refuse what Lightning would refuse with a traceback: config files that are not UTF-8 or empty,
        bad trainer flags, output folders that cannot be written."""
        OneLineParser._args = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        try:
            check_config_files(OneLineParser._args)
            cfg = super().parse_args(args, *rest, **kwargs)
            subcommand = cfg.get("subcommand")
            section = cfg.get(subcommand) if subcommand else cfg
            printing = any(a.startswith("--print_config") for a in OneLineParser._args)  # a config for another machine
            if section is not None and section.get("trainer") is not None and not printing:
                check_trainer(section.get("trainer"))
                check_output_folders(section)
        except GFConfigError as err:
            _refuse(str(err))
        return cfg


def _known_keys(parser) -> set[str]:
    """Every setting that ``parser`` and its subcommands' parsers accept (``trainer.max_epochs``, …)."""
    keys, stack, seen = set(), [parser], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for action in getattr(current, "_actions", []):
            if isinstance(action.dest, str) and action.dest.rpartition(".")[2] not in ("help", "==SUPPRESS=="):
                keys.add(action.dest)
            stack.extend(getattr(action, "_name_parser_map", {}).values())
    return keys


def _refuse(message: str) -> None:
    """A bad input: one line on stderr, exit 2."""
    print(f"gf_lightning: error: {' '.join(line.strip() for line in message.splitlines() if line.strip())}", file=sys.stderr)
    raise SystemExit(2)


class GFLightningCLI(LightningCLI):
    """LightningCLI with a checkpoint every epoch (``last.ckpt``) and a progress bar that refreshes every few steps; every
    checkpoint written atomically, finite and checksummed (:mod:`.checkpointing`); a resume that must continue the same
    run (:mod:`.resume`); each run in a ``version_N`` folder of its own (:mod:`.run_folder`)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(AtomicModelCheckpoint, "checkpoint")  # save_last=link made atomic too
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:04d}"})
        parser.set_defaults({"checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(TQDMProgressBar, "progress_bar")
        parser.set_defaults({"progress_bar.refresh_rate": 10})
        parser.add_argument("--resume_with_changes", type=bool, default=False,
                            help="with --ckpt_path: continue the run with settings that differ from the checkpoint's "
                                 "(the new values are used and recorded); without it such a resume is refused")

    def before_fit(self) -> None:
        """Store the run's settings in its checkpoints; on ``--ckpt_path``, refuse what cannot continue this run."""
        config = self.config[self.subcommand]
        self.model.run_settings = run_settings(config)
        if self._checkpoint is not None:
            probe = [torch.nn.Parameter(p.detach().clone()) for p in self.model.parameters()]
            changed = check_resume(self._checkpoint, config.ckpt_path, self.model.run_settings, self.model,
                                   self.model.optimizer(probe), bool(config.get("resume_with_changes")))
            self.model.resume_changes = changed or None
        self._checkpoint = None  # Lightning loads it again to restore the run; this copy is not needed after the check

    #: the ``--ckpt_path`` checkpoint, loaded and checked once by :meth:`_parse_ckpt_path` for :meth:`before_fit`
    _checkpoint: dict | None = None

    def _parse_ckpt_path(self) -> None:
        """Refuse a ``--ckpt_path`` that is a folder, empty, truncated or corrupted (checksum), before Lightning reads it;
        keep what was loaded for the resume's settings check."""
        subcommand = self.config.get("subcommand")
        self._checkpoint = check_ckpt_path(subcommand and self.config[subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs):
        """Drop the default checkpoint and progress-bar callbacks where the trainer config switches them off."""
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if trainer_cfg.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if trainer_cfg.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not isinstance(c, TQDMProgressBar)]
        # every checkpoint written beside its target and renamed into place, never with NaN/Inf, with a checksum
        plugins = with_safe_checkpoint_io(kwargs.pop("plugins", trainer_cfg.get("plugins")))
        callbacks.append(FiniteCheckpointGuard())
        trainer = self._instantiate_trainer({**trainer_cfg, **kwargs, "plugins": plugins}, callbacks)
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
    except MisconfigurationException as err:
        # Lightning's own refusal of a setting that the checks before it (validation.check_trainer) do not know
        print(f"gf_lightning: error: trainer: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except (NonFiniteError, GFStepError, CheckpointWriteError) as err:  # a full disk: the previous checkpoint is kept
        print(f"gf_lightning: {err}", file=sys.stderr)
        raise SystemExit(1) from None
