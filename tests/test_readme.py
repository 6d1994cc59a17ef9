"""The README's two commands: .ci/run runs exactly the test command; the main command names
files that exist."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The main command and the test command: the first block running `zoo compare` and the first
    running pytest."""
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)]
    return [next(b for b in blocks if "zoo compare" in b), next(b for b in blocks if "pytest" in b)]


def test_readme_names_the_ci_system_packages():
    """The README's apt line installs what .ci/run installs."""
    ci = (ROOT / ".ci" / "run").read_text()
    wanted = set(re.search(r"apt-get install -y -qq (.*?)>/dev/null", ci, re.S).group(1).replace("\\", " ").split())
    readme = (ROOT / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "apt-get install" in ln)
    assert wanted <= set(line.split()), wanted - set(line.split())


def test_ci_runs_the_readme_test_command():
    main, tests = readme_commands()
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests.replace("pip install ", "pip install -q ") in ci


def test_main_command_plans_the_smoke_spec(tmp_path):
    """The main command's spec expands into its runs (the full run is the README's main job)."""
    main, _ = readme_commands()
    assert "zoo compare experiments/smoke.toml" in main and "zoo report experiments/smoke.toml" in main
    r = subprocess.run([sys.executable, "-m", "zoo", "compare", "experiments/smoke.toml", "--dry-run",
                        "--root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    for mixer in ("rope", "retnet"):
        assert mixer in r.stdout


def readme_mixer_table() -> list[tuple[str, str, list[str]]]:
    """(family, file, registry names) of each row of the README's mixer table."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| family | file | registry names |"):].split("\n\n")[0].splitlines()[2:]
    rows = []
    for line in table:
        family, file, names = [c.strip() for c in line.strip("|").split("|")][:3]
        rows.append((family, file.strip("`"), re.findall(r"`([a-z0-9-]+)`", names)))
    return rows


def test_readme_mixer_table_matches_the_registry():
    """Every built-in mixer is in the table once, in its own family and the file it lives in."""
    from zoo import registry
    from zoo.mixer import FAMILIES

    specs = [registry.get_spec(n) for n in registry.names()]
    builtin = {s.name: s for s in specs if s.source == registry.BUILTIN_SOURCE}
    listed = {}
    for family, file, names in readme_mixer_table():
        assert family in FAMILIES, family
        for name in names:
            assert name not in listed, f"{name} listed twice"
            listed[name] = (family, file)
    assert set(listed) == set(builtin), set(listed) ^ set(builtin)
    for name, spec in builtin.items():
        module_file = spec.cls.__module__.replace(".", "/") + ".py"
        assert listed[name] == (spec.family, module_file), (name, listed[name], spec.family, module_file)
