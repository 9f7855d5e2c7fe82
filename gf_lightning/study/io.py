"""Writing a study's files so that a reader never sees half of one: the text beside its target, then renamed into place;
and the JSON the studies write (NaN and ∞ kept, as Python's ``json`` reads them back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def json_text(data: Any) -> str:
    """``data`` as the studies' JSON files hold it: indented by one, NaN and ∞ allowed."""
    return json.dumps(data, indent=1, allow_nan=True)
