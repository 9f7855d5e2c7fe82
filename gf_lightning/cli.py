"""``python -m gf_lightning {fit,validate,test} --config FILE``: LightningCLI with the optimizer injected from the
config."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import warnings

import torch
from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from . import components
from .checkpointing import AtomicModelCheckpoint, check_ckpt_path, with_safe_checkpoint_io
from .dashboard import TensorBoardDashboard
from .data.base import TensorDataModule
from .errors import CheckpointWriteError, GFConfigError, GFStepError, NonFiniteError
from .interruption import EXIT_SIGINT, EXIT_SIGTERM, InterruptedRun
from .model_checks import check_data, check_trainer
from .module import GradientFlowModule, with_epoch_loss
from .optim import OPTIMIZERS
from .parser_messages import one_line
from .resume import check_resume, check_scoring, listed, run_settings
from .run_folder import claim_logger_versions, run_name, tensorboard_logger
from .validation import check_config_files, check_output_folders, check_seed, check_trainer_flags

#: the command, as ``--help`` names it
PROG = "python -m gf_lightning"

#: the top of ``python -m gf_lightning --help``
DESCRIPTION = f"""\
gf_lightning: energy-stable gradient-flow optimizers (SAV, ExpSAV, IEQ, IEQ
adaptive) beside SGD and Adam, trained with PyTorch Lightning.

examples:
  {PROG} fit --config configs/exp3_expsav.yaml
      train experiment 3 with ExpSAV (configs/ has every experiment and method)
  {PROG} fit --config configs/exp3_sgd.yaml --model.optimizer=SAV
      the same run with SAV: the settings it shares with the config's optimizer
      (lr) are kept, the others are SAV's defaults
  {PROG} fit --model.optimizer.help SAV
      SAV's settings, each set as --model.optimizer.variant=relax
  {PROG} test --config configs/exp3_expsav.yaml --ckpt_path CKPT
      the test metrics of a trained run (CKPT: its checkpoints/last.ckpt)

'{PROG} fit --help' lists every setting."""

#: ``--help``'s choices for the network and the optimizer, in place of jsonargparse's list of every importable subclass
#: (about 660 lines of ``torch.nn.Module``s); any other class path is accepted all the same
CHOICES = {
    "model.net": f", choose by name: {', '.join(components.__all__)} (gf_lightning.components), or any "
    "torch.nn.Module by its class path",
    "model.optimizer": f", choose by name: {', '.join(cls.__name__ for cls in OPTIMIZERS.values())} "
    "(gf_lightning.optim), SGD, Adam, AdamW, … (torch.optim), or any torch.optim.Optimizer by its class path",
}


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with the network's and the optimizer's choices as :data:`CHOICES` lists them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action)
        known = action.extra_help() if action.dest in CHOICES and hasattr(action, "extra_help") else ""
        return text.replace(known, CHOICES[action.dest]) if known else text


class TopHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level help: :data:`DESCRIPTION` as written (its examples one to a line)."""


class OneLineParser(LightningArgumentParser):
    """A parser whose errors are one line on stderr and exit 2, without the usage dump (``--help`` still has it); its
    help is :class:`HelpFormatter`'s, and ``--print_config`` prints only a configuration that ``fit`` accepts
    (:meth:`dump`)."""

    #: the arguments of the parse under way: a nested parser names ``lr`` where the command line said
    #: ``--model.optimizer.init_args.lr``, and the message names the latter
    _args: list[str] = []

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # a misspelled key is refused, not taken for a longer one it begins
        kwargs.setdefault("prog", PROG)  # not "__main__.py"; a subcommand's parser is named after it ("… fit")
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    #: the ``--ckpt_path`` checkpoint of the parse, loaded and checked (:func:`check_ckpt_path`) before Lightning reads
    #: it
    checkpoint: dict | None = None

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        raise Refused(one_line(str(message), OneLineParser._args, _known_keys(self)))

    def parse_args(self, args=None, *rest, **kwargs):  # type: ignore[override]
        """Parse, then refuse what Lightning would refuse with a traceback: config files that are not UTF-8 or empty,
        bad trainer flags, output folders that cannot be written, a ``--ckpt_path`` that is not an intact checkpoint."""
        OneLineParser._args = (
            [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        )
        try:
            check_config_files(OneLineParser._args)
            cfg = super().parse_args(args, *rest, **kwargs)
            subcommand = cfg.get("subcommand")
            section = cfg.get(subcommand) if subcommand else cfg
            if section is not None:
                check_seed(section.get("seed_everything"))
            # a printed config may be for another machine: its trainer and folders are not checked here
            if section is not None and section.get("trainer") is not None and not _printing():
                check_trainer_flags(section.get("trainer"))
                check_output_folders(section)
            if subcommand:
                self.checkpoint = check_ckpt_path(section.get("ckpt_path"))
        except GFConfigError as err:
            raise Refused(str(err)) from None
        return cfg

    def dump(self, namespace: Namespace, *args, **kwargs) -> str:  # type: ignore[override]
        """The configuration as text; for ``--print_config``, only one that ``fit`` would accept: jsonargparse prints it
        while parsing, before anything builds the model, whose constructor checks the optimizer's settings, so the
        model's settings are checked here first (:func:`_check_model_settings`), with the line ``fit`` would print."""
        if _printing():
            _check_model_settings(namespace)
        return super().dump(namespace, *args, **kwargs)


def _printing() -> bool:
    """Whether the parse under way prints its configuration (``--print_config``) rather than running it."""
    return any(a.startswith("--print_config") for a in OneLineParser._args)


@functools.cache
def _model_settings_parser() -> ArgumentParser:
    """The model's settings but the network, typed as the command line types them (:func:`_check_model_settings`)."""
    parser = ArgumentParser()
    parser.add_class_arguments(GradientFlowModule, "model", skip={"net"}, instantiate=False)
    return parser


def _check_model_settings(config: Namespace) -> None:
    """Build the model of a parsed configuration (a subcommand's) as ``fit`` does, on a one-parameter stand-in for the
    network: what ``GradientFlowModule`` refuses (an optimizer setting such as ``variant`` or ``lr``, the task) raises
    the same ``GFConfigError``. Builds no network and draws no random numbers."""
    model = config.get("model") if isinstance(config, Namespace) else None
    if not isinstance(model, Namespace):
        return
    settings = model.clone(with_meta=False)
    settings.pop("net", None)
    built = _model_settings_parser().instantiate(Namespace(model=settings)).model
    stand_in = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1))])
    stand_in.m = 1  # a width, for model.particle_time: the real network's is checked when it is built
    GradientFlowModule(stand_in, **vars(built))


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


class Refused(SystemExit):
    """A bad input that the parser refused, with its one-line message: :func:`cli_main` prints it and exits 2. (A
    ``SystemExit``, as jsonargparse's own refusals, so that no handler on the way takes it for another error.)"""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


class GFLightningCLI(LightningCLI):
    """LightningCLI with a checkpoint every epoch (``last.ckpt``) and a progress bar that refreshes every few steps;
    every checkpoint written atomically, finite and checksummed (:mod:`.checkpointing`); a resume that must continue the
    same run (:mod:`.resume`); each run in a ``version_N`` folder of its own (:mod:`.run_folder`)."""

    def add_arguments_to_parser(self, parser) -> None:
        # the checkpoint and progress-bar callbacks' settings; instantiate_trainer adds them unless switched off
        parser.add_class_arguments(AtomicModelCheckpoint, "checkpoint", fail_untyped=False, sub_configs=True)
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:04d}"})
        parser.set_defaults({"checkpoint.auto_insert_metric_name": False})
        parser.add_class_arguments(TQDMProgressBar, "progress_bar", fail_untyped=False, sub_configs=True)
        parser.set_defaults({"progress_bar.refresh_rate": 10})
        parser.add_argument("--resume_with_changes", type=bool, default=False,
                            help="with --ckpt_path: continue the run with settings that differ from the checkpoint's "
                                 "(the new values are used and recorded), or (validate, test) score it on other data "
                                 "or model settings than its run's; without it either is refused")
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="the experiment the run belongs to: its logs go to lightning_logs/<experiment>/<run_name>/"
            "version_N (default: the data module's class, lower case; the configs set exp1 … exp4)",
        )
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="the run's name within its experiment (default: the method, with its variant when not "
                                 "the default: sav, expsav-relax, ieq_adaptive)")

    @property
    def _checkpoint(self) -> dict | None:
        """The ``--ckpt_path`` checkpoint as the parser loaded and checked it (with the entries of this version)."""
        checkpoint = self.parser.checkpoint
        return with_epoch_loss(checkpoint) if checkpoint is not None else None

    def before_fit(self) -> None:
        """Refuse a model that does not fit the data or the trainer; store the run's settings in its checkpoints; on
        ``--ckpt_path``, refuse what cannot continue this run."""
        check_data(self.model, self.datamodule)
        check_trainer(self.model, self.trainer, self.datamodule)
        config = self.config[self.subcommand]
        self.model.run_settings = run_settings(config)
        if self._checkpoint is not None:
            probe = [torch.nn.Parameter(p.detach().clone()) for p in self.model.parameters()]
            changed = check_resume(self._checkpoint, config.ckpt_path, self.model.run_settings, self.model,
                                   self.model.optimizer(probe), bool(config.get("resume_with_changes")))
            self.model.resume_changes = changed or None
        # Lightning loads it again to restore the run; this copy is not needed after the check
        self.parser.checkpoint = None

    def before_validate(self) -> None:
        """Refuse a model that does not fit the data; on ``--ckpt_path``, refuse to score the checkpoint on another
        run's data or model (:func:`check_scoring`), or, with ``--resume_with_changes``, say in one line what
        differs."""
        check_data(self.model, self.datamodule)
        config = self.config[self.subcommand]
        if self._checkpoint is not None:
            changed = check_scoring(self._checkpoint, config.ckpt_path, run_settings(config), self.model,
                                    bool(config.get("resume_with_changes")))
            if changed:
                print(f"gf_lightning: scoring {config.ckpt_path} with settings other than its run's "
                      f"(--resume_with_changes): {listed(changed)}", file=sys.stderr)
        self.parser.checkpoint = None

    before_test = before_predict = before_validate

    def instantiate_trainer(self, **kwargs):
        """The trainer with the checkpoint and progress-bar callbacks (unless the trainer config switches them off),
        every checkpoint written through :class:`~gf_lightning.checkpointing.SafeCheckpointIO`, the run's own logger and
        dashboard, and the line that says where an interrupted run stopped."""
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = section.get("trainer") or {}
        given = trainer_cfg.get("callbacks")
        callbacks = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
        if trainer_cfg.get("enable_checkpointing") is not False:
            callbacks.append(section.get("checkpoint"))
        if trainer_cfg.get("enable_progress_bar") is not False:
            callbacks.append(section.get("progress_bar"))
        # the default logger, named after the run (lightning_logs/<experiment>/<run>/version_N), and its dashboard
        name = run_name(self.config.get(str(self.subcommand), self.config))
        logger = trainer_cfg.get("logger")
        if logger in (None, True):
            logger = tensorboard_logger(trainer_cfg.get("default_root_dir") or os.getcwd(), name)
        callbacks += [InterruptedRun(), TensorBoardDashboard(name.experiment, name.run)]
        # every checkpoint written beside its target and renamed into place, never with NaN/Inf, with a checksum
        plugins = with_safe_checkpoint_io(kwargs.pop("plugins", trainer_cfg.get("plugins")))
        try:
            trainer = super().instantiate_trainer(
                **{"callbacks": callbacks, "logger": logger, **kwargs, "plugins": plugins}
            )
        except GFConfigError:
            raise
        except (MisconfigurationException, ValueError, TypeError) as err:  # Lightning's refusal of a trainer flag
            raise GFConfigError(f"trainer: {err}") from None
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


#: Lightning's warnings that bury the project's own one-line messages, none of which a user can act on: torch's
#: deprecation of a class Lightning 2.6 still uses, and the advice to save the weights before the step in manual
#: optimization (a step checkpoint here is taken between complete steps, and resumes bit for bit)
NOISE_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"Using ModelCheckpoint with manual optimization and every_n_train_steps", UserWarning),
)
#: the start of Lightning's info lines that advertise a product, dropped from its rank-zero loggers
NOISE_INFO = ("💡 Tip: For seamless cloud logging",)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(NOISE_INFO)


def quiet_lightning_noise() -> None:
    """Silence :data:`NOISE_WARNINGS` and :data:`NOISE_INFO`, and nothing else (Lightning's other messages stay)."""
    for message, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


def cli_main(args: list[str] | None = None, run: bool = True) -> GFLightningCLI | None:
    """Entry point; ``args`` as on the command line (tests pass a list). The one place where an error becomes a message:
    a bad input (the parser's, the project's checks', Lightning's own refusal of a setting) one line and exit 2; a run
    that stopped (non-finite, a step that cannot be taken, a checkpoint that cannot be written) one line and exit 1."""
    quiet_lightning_noise()
    try:
        return GFLightningCLI(
            GradientFlowModule,
            TensorDataModule,
            parser_class=OneLineParser,
            parser_kwargs={"description": DESCRIPTION, "formatter_class": TopHelpFormatter},
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except Refused as err:
        _exit(f"error: {err.message}", 2)
    except (GFConfigError, FileNotFoundError) as err:
        _exit(f"error: {err}", 2)
    except ValueError as err:
        # jsonargparse wraps what a class raised while it was being built (the data module is an optional subclass)
        cause = _config_error_in(err)
        if cause is None:
            raise
        _exit(f"error: {cause}", 2)
    except MisconfigurationException as err:
        # Lightning's own refusal of a setting that the checks before it (validation.check_trainer_flags) do not know
        _exit(f"error: trainer: {err}", 2)
    except (NonFiniteError, GFStepError, CheckpointWriteError) as err:  # a full disk: the previous checkpoint is kept
        _exit(str(err), 1)
    except SIGTERMException:  # Lightning stopped the run (exit 0 otherwise); InterruptedRun said where it stopped
        raise SystemExit(EXIT_SIGTERM) from None
    except KeyboardInterrupt:  # before the trainer started: Lightning turns one during the run into exit 1
        _exit("interrupted by Ctrl-C (SIGINT) before the run started", EXIT_SIGINT)
    except SystemExit as err:
        if isinstance(err.__context__, KeyboardInterrupt):  # Lightning's exit 1 after Ctrl-C during the run
            raise SystemExit(EXIT_SIGINT) from None
        raise


def _exit(message: str, code: int) -> None:
    """``gf_lightning: <message>`` as one line on stderr, and exit ``code``."""
    print(f"gf_lightning: {' '.join(line.strip() for line in message.splitlines() if line.strip())}", file=sys.stderr)
    raise SystemExit(code) from None
