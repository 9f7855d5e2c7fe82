"""A sweep's point names and identities are those its committed results were written under: a point's folder name
ends in a hash of its command line (:func:`gf_lightning.study.sweep.grid.identity`), and a re-run skips a point whose
record has the same identity (:func:`gf_lightning.study.sweep.records.done`). Breakage: any change to the hashing or to
the command line a plan builds, which would re-run every point of a running study (tried: a changed identity fails)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from support import ROOT

from gf_lightning.study.sweep.grid import Plan, identity
from gf_lightning.study.sweep.records import RunRecord, done, point_folder

SWEEPS = sorted((ROOT / "docs" / "results" / "sweeps").glob("*/results.json"))


@pytest.mark.parametrize("results", SWEEPS, ids=[p.parent.name for p in SWEEPS])
def test_committed_records_keep_their_names_and_are_done(results, tmp_path):
    data = json.loads(results.read_text())
    plan = dataclasses.replace(Plan.from_json(data["plan"]), out=str(tmp_path))
    points = {(p.method, json.dumps(p.values)): p for p in plan.points()}
    same = 0
    for raw in data["records"]:
        record = RunRecord(**raw)
        point = points[(record.method, json.dumps(record.settings))]
        if identity(record.args) != identity(list(point.args)):
            continue  # an optimizer class has gained a setting since: a new command line, so a new name (and a re-run)
        assert point.name == record.name
        same += 1
        if record.status in ("trained", "frozen", "unstable", "diverged") and record.exit_code == 0 and same <= 3:
            folder = point_folder(point)
            folder.mkdir(parents=True)
            record.save(folder)
            assert done(point) is not None
    assert same > 0
