"""``backupy validate``: exit 0 with a summary, or exit 2 with every violation and no traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from config.jobs import load_config
from workers.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "jobs.example.yaml"
RECIPIENT = "age1q4dagekutwtvsenc5a4npf8r56fxknr8t0m5jadz2qa38j4h6yhqetcfry"


def app_db(**fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": "app-db",
        "schedule": "0 3 * * *",
        "target": {
            "type": "postgresql",
            "host": "127.0.0.1",
            "port": 5432,
            "database": "app",
            "user": "backup",
            "password_env": "APP_DB_PASSWORD",
        },
        "hooks_budget": "30m",
        "pre_hooks": [{"command": "echo 1"}, {"command": "echo 2"}],
        "post_hooks": [{"command": "echo 3"}],
    }
    job.update(fields)
    return job


def write_config(tmp_path: Path, *jobs: dict[str, Any]) -> Path:
    data = {
        "storage": {"type": "local", "path": "./var/backups"},
        "encryption": {"recipients": [RECIPIENT]},
        "jobs": list(jobs) or [app_db()],
    }
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Operator overrides of the machine running the tests must not change the results."""
    for name in list(os.environ):
        if name.startswith("BACKUPY_"):
            monkeypatch.delenv(name)


def test_valid_config_prints_a_summary(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = run("validate", "-c", str(path))
    assert result.exit_code == 0, result.output
    config = load_config(path)
    lines = result.output.splitlines()
    assert lines == [
        f'app-db  schedule "0 3 * * *"  queue backups  postgresql  2 pre + 1 post hooks  '
        f"budget 30m  digest {config.job_digest('app-db')[:12]}",
        f"config digest {config.digest}",
    ]


def test_summary_of_the_example_file() -> None:
    result = run("validate", "--config", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert re.search(
        r"^example-sqlite +schedule .* sqlite +2 pre \+ 1 post hooks", result.output, re.M
    )
    assert re.search(r"^app-db +schedule \"0 3 \* \* \*\" .* postgresql ", result.output, re.M)
    assert re.search(r"^config digest [0-9a-f]{64}$", result.output, re.M)


def test_config_from_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = run("validate", env={"BACKUPY_CONFIG": str(path)})
    assert result.exit_code == 0, result.output


def test_violations_listed_with_exit_2(tmp_path: Path) -> None:
    bad = app_db(
        schedule="0 3 * *",
        pre_hooks=[*[{"command": "x"}] * 3, {"command": "a" * 5000}],
        post_hooks=[{"command": "x", "when": "sometimes"}],
    )
    path = write_config(tmp_path, bad)
    result = run("validate", "-c", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}: 3 violation(s)",
        "jobs[app-db].schedule: '0 3 * *' has 4 field(s); a schedule is 5 cron fields "
        "(minute hour day-of-month month day-of-week), in UTC",
        "jobs[app-db].pre_hooks[3].command: 5000 bytes, the limit is 4096",
        "jobs[app-db].post_hooks[0].when: must be 'always', 'success' or 'failure', "
        "not 'sometimes'",
    ]
    assert "Traceback" not in result.output


def test_yaml_syntax_error_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  - id: a\n    schedule: */5 * * * *\n", encoding="utf-8")
    result = run("validate", "-c", str(path))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"{path}: 1 violation(s)"
    assert lines[1].startswith(f"{path}: YAML syntax error at line 3")
    assert "Traceback" not in result.stderr


def test_missing_file_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run("validate", "-c", str(path))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"{path}: 1 violation(s)", f"{path}: no such file"]
    assert "Traceback" not in result.stderr


def test_bad_operator_override_exit_2_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = run("validate", "-c", str(path), env={"BACKUPY_HOOKS_MAX_COUNT": "many"})
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "BACKUPY_HOOKS_MAX_COUNT" in line


def test_operator_override_applies(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = run("validate", "-c", str(path), env={"BACKUPY_HOOK_COMMAND_MAX_BYTES": "5"})
    assert result.exit_code == 2
    assert "jobs[app-db].pre_hooks[0].command: 6 bytes, the limit is 5" in result.stderr


def backupy_script() -> Path:
    """The installed console script (``pip install -e .`` puts it beside the interpreter)."""
    script = Path(sys.executable).parent / "backupy"
    if not script.exists():
        found = shutil.which("backupy")
        if found is None:
            pytest.skip("the backupy script is not installed (pip install -e . --no-deps)")
        script = Path(found)
    return script


def test_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPY_")}
    good = subprocess.run(
        [str(backupy_script()), "validate", "-c", str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert good.returncode == 0, good.stderr
    assert "config digest " in good.stdout

    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text("storage: [\n", encoding="utf-8")
    bad = subprocess.run(
        [str(backupy_script()), "validate", "-c", str(bad_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.startswith(f"{bad_path}: 1 violation(s)\n")
    assert "Traceback" not in bad.stderr
