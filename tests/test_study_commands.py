"""``python -m gf_lightning.study COMMAND``: every pipeline's command is reached by its name, with the arguments its
script takes; ``scripts/*.py`` are shims over the same ``main``. Breakage: a command that is not dispatched, or a shim
that calls another command (tried: each fails)."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import pytest
from support import ROOT

from gf_lightning.study.__main__ import COMMANDS, main

SCRIPTS = {"reproduce": "reproduce.py", "sweep": "sweep.py", "compare": "compare_sweeps.py", "paper": "paper.py",
           "burgers-figure": "burgers_figure.py", "pinn-race": "pinn_race.py"}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_answers_help_with_its_own_options(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"python -m gf_lightning.study {name}" in out


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_each_script_is_the_packages_command(name, capsys):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / SCRIPTS[name])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exc:
        script.main(["--help"])
    assert exc.value.code == 0
    assert f"python scripts/{SCRIPTS[name]}" in capsys.readouterr().out
    assert importlib.import_module(COMMANDS[name][0]).main.__module__ == COMMANDS[name][0]


def test_no_command_or_an_unknown_one_is_refused_in_one_line(capsys):
    assert main([]) == 2
    assert main(["sweeep"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m gf_lightning.study: error: unknown command 'sweeep'; allowed: reproduce")


def test_the_module_runs_as_a_program():
    proc = subprocess.run([sys.executable, "-m", "gf_lightning.study", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "pinn-race" in proc.stdout, proc.stderr


@pytest.mark.parametrize(("name", "bad"), [("reproduce", ["--jobs", "abc"]), ("sweep", ["--max-epochs", "abc"]),
                                           ("compare", []), ("paper", ["--jobs", "abc"]),
                                           ("burgers-figure", ["--nope"]), ("pinn-race", ["--budget", "abc"])])
def test_a_bad_argument_is_one_line(name, bad, capsys):
    """A wrong type, an unknown option or a missing argument: exit 2 and one line naming it (before: argparse's usage
    dump of up to twenty lines above the error)."""
    with pytest.raises(SystemExit) as exc:
        main([name, *bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith(f"python -m gf_lightning.study {name}: error:")
