"""The README's two commands: .ci/run runs exactly the test command; the main command names
files that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command():
    main, tests = readme_commands()
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests.replace("pip install ", "pip install -q ") in ci


def test_main_command_runs_the_smoke_spec_and_its_report():
    main, _ = readme_commands()
    assert "zoo compare experiments/smoke.toml" in main and "zoo report experiments/smoke.toml" in main
    assert (ROOT / "experiments" / "smoke.toml").is_file()
