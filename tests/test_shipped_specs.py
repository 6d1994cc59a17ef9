"""Every spec the project ships (experiments/ and benchmarks/) loads and plans: a spec that
names a field or mixer that no longer exists fails here, not on the GPU machine."""

from pathlib import Path

import pytest

from zoo.experiment.spec import load_spec, plan

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted([*ROOT.glob("experiments/*.toml"), *ROOT.glob("benchmarks/*.toml")])


def test_the_specs_are_found():
    assert len(SPECS) >= 10 and ROOT / "experiments" / "smoke.toml" in SPECS


@pytest.mark.parametrize("path", SPECS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_shipped_spec_loads_and_plans(path):
    spec = load_spec(path)
    runs = plan(spec)
    assert runs, f"{path.name} plans no run"
    assert len({r.run_id for r in runs}) == len(runs), f"{path.name} plans one run twice"
