"""jsonargparse's refusals (many lines, Python type reprs) as one readable line that names the setting, what was given
and what is allowed, with ``did you mean …?`` for a misspelled key; :func:`one_line` is what the command line prints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .validation import config_files

_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "NoneType": "null",
               "torch.Tensor": "a tensor", "dict": "a mapping", "list": "a list"}


def _allowed_types(text: str) -> list[str]:
    """The types and literal values a jsonargparse message lists, in words."""
    subtypes = re.search(r"Subtypes: \[(.*?)\]\s*(Errors:|Given value|$)", text, re.S)
    source = (
        subtypes.group(1)
        if subtypes
        else " ".join(re.findall(r"Expected an? (<class '[^']+'>|typing\.Literal\[[^\]]*\])", text))
    )
    words: list[str] = []
    for literal, cls in re.findall(r"typing\.Literal\[([^\]]*)\]|<class '([^']+)'>", source):
        if literal:
            words.extend(v.strip() for v in literal.split(",") if v.strip())
        elif cls:
            name = cls.rsplit('.', 1)[-1]
            word = _TYPE_WORDS.get(cls, f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}")
            if word not in words:
                words.append(word)
    return words


def _full_key(key: str, args: list[str]) -> str:
    """A nested parser names ``lr``; the command line said ``--model.optimizer.init_args.lr``: name that."""
    if "." in key:
        return key
    for arg in args:
        match = re.match(rf"--([\w.]*\.{re.escape(key)})(=|$)", arg)
        if match:
            return match.group(1)
    return key


def _class_path_of(prefix: str, args: list[str]) -> str | None:
    """The class_path that the command line or a config file gives ``prefix`` (``model.optimizer``), if any."""
    for arg in reversed(args):
        for form in (f"--{prefix}.class_path=", f"--{prefix}="):
            if arg.startswith(form) and not arg[len(form):].lstrip().startswith("{"):
                return arg[len(form):]
    for _, path in reversed(config_files(args)):
        try:
            node: Any = yaml.safe_load(Path(path).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for part in prefix.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get("class_path"), str):
            return node["class_path"]
    return None


def _settings_like(name: str, known: set[str], args: list[str]) -> str:
    """``; did you mean …?`` with the known settings closest to ``name`` (those of the class for ``….init_args.x``)."""
    import difflib
    import importlib
    import inspect

    key = name.lstrip("-")
    candidates, stem = set(known), key
    if ".init_args." in key:
        prefix, stem = key.split(".init_args.", 1)
        class_path = _class_path_of(prefix, args)
        candidates = set()
        if class_path and "." in class_path:
            module, _, attr = class_path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), attr)
                candidates = {n for n, p in inspect.signature(cls).parameters.items()
                              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "params"}
            except Exception:  # noqa: BLE001 - no suggestion then
                candidates = set()
    close = difflib.get_close_matches(stem, sorted(candidates), n=3, cutoff=0.6)
    if not close:
        return "allowed: the settings that --help lists"
    if ".init_args." in key:
        close = [f"{key.rsplit('.', 1)[0]}.{c}" for c in close]
    return f"did you mean {' or '.join(close)}? (--help lists the settings)"


def one_line(message: str, args: list[str] | None = None, known: set[str] | None = None) -> str:
    """jsonargparse's message (many lines, Python type reprs) as one readable line that names the setting, what was
    given and what is allowed."""
    args = args or []
    text = str(message)
    flat = " ".join(line.strip() for line in text.splitlines() if line.strip())
    help_hint = "(see --help)"
    match = re.match(r'Parser key "([^"]+)":\s*(.*)', text, re.S)
    if match:
        key, rest = _full_key(match.group(1), args), match.group(2)
        rest_flat = " ".join(line.strip() for line in rest.splitlines() if line.strip())
        if key == "config":
            return f"--config: {rest_flat}; allowed: a YAML file that exists {help_hint}"
        cls_problem = re.search(r"Problem with given class_path '([^']+)':\s*(.*?)(?:\s+- Expected|\s+Given value|$)",
                                rest_flat)
        if cls_problem:
            return (
                f"{key}: class_path {cls_problem.group(1)!r} cannot be used: {cls_problem.group(2).strip()}; allowed: "
                f"the dotted import path of an existing class {help_hint}"
            )
        callable_problem = re.search(
            r"expects a function or a callable class: (.*?)\. Got value: .*class_path='([^']+)'", rest_flat
        )
        if callable_problem:
            return (
                f"{key}: class_path {callable_problem.group(2)!r} cannot be used: {callable_problem.group(1)}; "
                f"allowed: the dotted import path of a class"
                f"{', such as torch.optim.SGD or gf_lightning.optim.SAV' if 'optimizer' in key else ''} {help_hint}"
            )
        given = re.findall(r"(?:Given value|Got value): (.*?)(?:\s+Given value type:|$)", rest_flat)
        allowed = _allowed_types(rest)
        if given or allowed:
            value = given[-1].strip() if given else "?"
            return f"{key}={value}: not allowed; allowed: {', '.join(allowed) or 'see --help'} {help_hint}"
        return f"{key}: {rest_flat[:300]} {help_hint}"
    unknown = re.match(r"(?:unrecognized arguments: |Subcommand '\w+' does not accept option '|Option ')([^' ]+)", text)
    if unknown:
        name = unknown.group(1).split("=", 1)[0]
        name = name if name.startswith("--") else _full_key(name, args)
        return f"{name} is not a setting of this command; {_settings_like(name, known or set(), args)}"
    if text.startswith("Problems parsing config"):
        return f"a config file is not valid YAML: {flat[len('Problems parsing config:'):].strip()[:300]}"
    if text.startswith("Unexpected config:"):
        return "a config file holds no settings (empty, or not a YAML mapping); allowed: a YAML mapping of settings"
    return flat[:400]
