"""The job config schema: every rule at its boundary, error format, digests, loading."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.jobs import (
    Config,
    ConfigError,
    PostHook,
    PreHook,
    command_violation,
    format_duration,
    load_config,
    parse_config,
)
from config.limits import LimitError, Limits, load_limits

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "jobs.example.yaml"
RECIPIENT = "age1q4dagekutwtvsenc5a4npf8r56fxknr8t0m5jadz2qa38j4h6yhqetcfry"
LIMITS = Limits()


def a_job(**fields: Any) -> dict[str, Any]:
    """A valid PostgreSQL job; ``fields`` replace or add keys."""
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
        "pre_hooks": [{"command": "echo pre"}],
        "post_hooks": [{"command": "echo post"}],
    }
    job.update(fields)
    return job


def a_config(*jobs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "storage": {"type": "local", "path": "./var/backups"},
        "encryption": {"recipients": [RECIPIENT]},
        "jobs": list(jobs) if jobs else [a_job()],
    }
    data.update(fields)
    return data


def violations(data: Any, limits: Limits = LIMITS) -> list[str]:
    """The violations ``data`` produces (fails the test when it is valid)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(data, limits=limits)
    return caught.value.violations


def only_violation(data: Any, limits: Limits = LIMITS) -> str:
    found = violations(data, limits)
    assert len(found) == 1, found
    return found[0]


def hooks(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"command": f"echo {n}", **fields} for n in range(count)]


# --------------------------------------------------------------------------- a valid config


def test_valid_config_fills_defaults_from_limits() -> None:
    config = parse_config(a_config(), limits=LIMITS)
    job = config.job("app-db")
    assert job.queue == "backups"
    assert job.timeout == 3600.0
    assert job.hook_order == "parallel"
    assert job.hooks_budget == LIMITS.hooks_total_budget
    assert job.pre_hooks[0] == PreHook(command="echo pre", timeout=300.0, on_error="fail")
    assert job.post_hooks[0] == PostHook(command="echo post", timeout=300.0, when="always")
    assert job.compression.type == "zstd" and job.compression.level == 3
    assert job.retention is None


def test_durations_accept_units_and_seconds() -> None:
    job = a_job(timeout="2h", hooks_budget=600, pre_hooks=[{"command": "x", "timeout": "30s"}])
    job["post_hooks"] = [{"command": "y", "timeout": "5m"}]
    parsed = parse_config(a_config(job)).job("app-db")
    assert (parsed.timeout, parsed.hooks_budget) == (7200.0, 600.0)
    assert parsed.pre_hooks[0].timeout == 30.0
    assert parsed.post_hooks[0].timeout == 300.0


@pytest.mark.parametrize(
    ("value", "words"),
    [("soon", "'soon' is not a duration"), ("0s", "not a positive duration"), (True, "True")],
)
def test_bad_duration(value: Any, words: str) -> None:
    found = only_violation(a_config(a_job(timeout=value)))
    assert found.startswith("jobs[app-db].timeout: ")
    assert words in found


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    sqlite = config.job("example-sqlite")
    assert sqlite.target.type == "sqlite"
    assert sqlite.target.path == "./var/example.db"  # type: ignore[union-attr]
    assert (len(sqlite.pre_hooks), len(sqlite.post_hooks)) == (2, 1)
    assert config.job("app-db").target.password_env == "APP_DB_PASSWORD"  # type: ignore[union-attr]
    assert config.storage.type == "local"
    assert config.encryption != "none"


def test_encryption_none_said_explicitly() -> None:
    assert parse_config(a_config(encryption="none")).encryption == "none"
    data = a_config()
    del data["encryption"]
    assert only_violation(data) == "encryption: required"


@pytest.mark.parametrize(
    ("encryption", "message"),
    [
        ({"recipients": []}, "encryption.recipients: needs at least 1 item(s)"),
        (
            {"recipients": ["age1notakey"]},
            "encryption.recipients[0]: not a valid age X25519 recipient (age1...)",
        ),
        ("plaintext", "encryption: must be 'none' or {recipients: [age1...]}"),
    ],
)
def test_bad_encryption(encryption: Any, message: str) -> None:
    assert only_violation(a_config(encryption=encryption)) == message


# ------------------------------------------------------------- command size and content


@pytest.mark.parametrize(
    ("command", "ok"),
    [
        ("x" * 4096, True),
        ("x" * 4097, False),
        ("é" * 2000, True),  # 4000 bytes
        ("é" * 2048, True),  # 4096 bytes
        ("é" * 2049, False),  # 4098 bytes: the limit counts bytes, not characters
    ],
)
def test_command_size_counts_utf8_bytes(command: str, ok: bool) -> None:
    data = a_config(a_job(pre_hooks=[{"command": command}]))
    if ok:
        assert parse_config(data, limits=LIMITS).job("app-db").pre_hooks[0].command == command
    else:
        size = len(command.encode())
        assert only_violation(data) == (
            f"jobs[app-db].pre_hooks[0].command: {size} bytes, the limit is 4096"
        )


def test_error_format_exactly() -> None:
    job = a_job(pre_hooks=[*hooks(3), {"command": "a" * 5000}])
    assert only_violation(a_config(job)) == (
        "jobs[app-db].pre_hooks[3].command: 5000 bytes, the limit is 4096"
    )


@pytest.mark.parametrize("command", ["", "   \n"])
def test_empty_command_refused(command: str) -> None:
    found = only_violation(a_config(a_job(post_hooks=[{"command": command}])))
    assert found.startswith("jobs[app-db].post_hooks[0].command: empty command")


def test_nul_byte_refused() -> None:
    found = only_violation(a_config(a_job(pre_hooks=[{"command": "echo a\x00rm -rf /"}])))
    assert found.startswith("jobs[app-db].pre_hooks[0].command: contains a NUL byte")
    assert "rm -rf" not in found  # the command itself is never echoed


def test_command_violation_is_reusable_by_the_worker() -> None:
    assert command_violation("echo ok", LIMITS) is None
    assert command_violation("x" * 4097, LIMITS) == "4097 bytes, the limit is 4096"


def test_operator_override_lowers_command_cap() -> None:
    limits = load_limits({"BACKUPY_HOOK_COMMAND_MAX_BYTES": "100"})
    assert parse_config(a_config(a_job(pre_hooks=[{"command": "x" * 100}])), limits=limits)
    found = only_violation(a_config(a_job(pre_hooks=[{"command": "x" * 101}])), limits)
    assert found == "jobs[app-db].pre_hooks[0].command: 101 bytes, the limit is 100"


def test_limits_through_pydantic_context() -> None:
    limits = Limits(command_max_bytes=10)
    data = a_config(a_job(pre_hooks=[{"command": "x" * 11}]))
    with pytest.raises(Exception, match="11 bytes"):
        Config.model_validate(data, context={"limits": limits})
    assert Config.model_validate(data)  # default: this host's limits


def test_bad_operator_override_raises_limit_error() -> None:
    with pytest.raises(LimitError):
        parse_config(a_config(), limits=load_limits({"BACKUPY_HOOKS_MAX_COUNT": "-1"}))


# --------------------------------------------------------------------------- hook count


def test_sixteen_hooks_pass() -> None:
    config = parse_config(a_config(a_job(pre_hooks=hooks(10), post_hooks=hooks(6))))
    assert len(config.job("app-db").pre_hooks) == 10


def test_seventeen_hooks_fail_pre_and_post_together() -> None:
    found = only_violation(a_config(a_job(pre_hooks=hooks(10), post_hooks=hooks(7))))
    assert found == "jobs[app-db]: 17 hooks (10 pre + 7 post), the limit is 16"


def test_hook_count_reported_with_the_hooks_own_errors() -> None:
    job = a_job(pre_hooks=[*hooks(16), {"command": ""}], post_hooks=[])
    found = violations(a_config(job))
    assert found[0].startswith("jobs[app-db].pre_hooks[16].command: empty command")
    assert "jobs[app-db]: 17 hooks (17 pre + 0 post), the limit is 16" in found


def test_operator_override_of_hook_count() -> None:
    limits = load_limits({"BACKUPY_HOOKS_MAX_COUNT": "2"})
    found = only_violation(a_config(a_job(pre_hooks=hooks(2), post_hooks=hooks(1))), limits)
    assert found == "jobs[app-db]: 3 hooks (2 pre + 1 post), the limit is 2"


# --------------------------------------------------------------------------- timeouts and budget


def test_hook_timeout_at_cap_passes() -> None:
    job = a_job(pre_hooks=[{"command": "x", "timeout": "15m"}])
    assert parse_config(a_config(job)).job("app-db").pre_hooks[0].timeout == 900.0


def test_hook_timeout_above_cap_fails() -> None:
    found = only_violation(a_config(a_job(post_hooks=[{"command": "x", "timeout": 901}])))
    assert found == "jobs[app-db].post_hooks[0].timeout: 901s, the limit is 15m"


def test_hook_timeout_below_cap_passes() -> None:
    job = a_job(pre_hooks=[{"command": "x", "timeout": "30s"}])
    assert parse_config(a_config(job)).job("app-db").pre_hooks[0].timeout == 30.0


def test_default_hook_timeout_follows_a_lowered_cap() -> None:
    limits = load_limits({"BACKUPY_HOOK_TIMEOUT_MAX": "2m"})
    config = parse_config(a_config(), limits=limits)
    assert config.job("app-db").pre_hooks[0].timeout == 120.0


def test_budget_at_cap_passes() -> None:
    assert parse_config(a_config(a_job(hooks_budget="30m"))).job("app-db").hooks_budget == 1800


def test_budget_above_cap_fails() -> None:
    found = only_violation(a_config(a_job(hooks_budget="31m")))
    assert found == "jobs[app-db].hooks_budget: 31m, the limit is 30m"


def test_budget_below_cap_and_job_timeout_pass() -> None:
    job = parse_config(a_config(a_job(hooks_budget="10m", timeout="6h"))).job("app-db")
    assert (job.hooks_budget, job.timeout) == (600.0, 21600.0)


def test_operator_override_of_budget() -> None:
    limits = load_limits({"BACKUPY_HOOKS_TOTAL_BUDGET": "10m"})
    assert parse_config(a_config(), limits=limits).job("app-db").hooks_budget == 600.0
    found = only_violation(a_config(a_job(hooks_budget="11m")), limits)
    assert found == "jobs[app-db].hooks_budget: 11m, the limit is 10m"


# --------------------------------------------------------------------------- ids, schedule, queue


@pytest.mark.parametrize("job_id", ["a", "0", "app_db-2", "a" * 64])
def test_good_job_ids(job_id: str) -> None:
    assert parse_config(a_config(a_job(id=job_id))).job(job_id).id == job_id


@pytest.mark.parametrize("job_id", ["", "App", "-app", "_app", "a" * 65, "app db", "app\n", "ä"])
def test_bad_job_ids_located_by_index(job_id: str) -> None:
    found = only_violation(a_config(a_job(id=job_id)))
    assert found.startswith("jobs[0].id: ")
    assert "is not a valid id" in found


def test_bad_queue() -> None:
    found = only_violation(a_config(a_job(queue="Backups!")))
    assert found.startswith("jobs[app-db].queue: 'Backups!' is not a valid queue")


def test_duplicate_job_id() -> None:
    found = violations(a_config(a_job(), a_job(schedule="0 4 * * *")))
    assert found == ["jobs: duplicate job id 'app-db' (2 times: jobs[0], jobs[1])"]


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        ("0 3 * * * *", "has 6 field(s)"),
        ("@daily", "has 1 field(s)"),
        ("61 3 * * *", "is not a valid cron expression"),
        ("0 3 * * funday", "is not a valid cron expression"),
        ("0 3 31 2 *", "never fires"),
        ("0 3 L * *", "not accepted by Celery beat"),
        ("0 3 * * 7", "not accepted by Celery beat"),
        ("0 3 * * 1#2", "not accepted by Celery beat"),
        ("0 3 1 * mon", "restricts both day-of-month and day-of-week"),
    ],
)
def test_bad_cron(schedule: str, words: str) -> None:
    """Refused by croniter, or read differently by Celery beat's crontab."""
    found = only_violation(a_config(a_job(schedule=schedule)))
    assert found.startswith("jobs[app-db].schedule: ")
    assert words in found


@pytest.mark.parametrize(
    "schedule", ["*/15 * * * *", "0 3 * * mon-fri", "0 0-23/2 1,15 * *", "30 4 * jan,jul *"]
)
def test_good_cron(schedule: str) -> None:
    assert parse_config(a_config(a_job(schedule=schedule))).job("app-db").schedule == schedule


# ---------------------------------------------------------- unknown fields and choices


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("top", "jobz: unknown field"),
        ("job", "jobs[app-db].pre_hook: unknown field"),
        ("hook", "jobs[app-db].pre_hooks[0].comand: unknown field"),
        ("target", "jobs[app-db].target.passwd: unknown field"),
        ("storage", "storage.bukket: unknown field"),
    ],
)
def test_unknown_fields(where: str, expected: str) -> None:
    data = a_config()
    job = data["jobs"][0]
    {
        "top": lambda: data.update(jobz=[]),
        "job": lambda: job.update(pre_hook=[]),
        "hook": lambda: job["pre_hooks"][0].update(comand="x"),
        "target": lambda: job["target"].update(passwd="APP"),
        "storage": lambda: data["storage"].update(bukket="b"),
    }[where]()
    assert only_violation(data) == expected


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (
            a_job(pre_hooks=[{"command": "x", "on_error": "ignore"}]),
            "jobs[app-db].pre_hooks[0].on_error: must be 'fail' or 'continue', not 'ignore'",
        ),
        (
            a_job(post_hooks=[{"command": "x", "when": "never"}]),
            "jobs[app-db].post_hooks[0].when: must be 'always', 'success' or 'failure', "
            "not 'never'",
        ),
        (
            a_job(hook_order="random"),
            "jobs[app-db].hook_order: must be 'parallel' or 'sequential', not 'random'",
        ),
        (
            a_job(pre_hooks=[{"command": "x", "when": "always"}]),
            "jobs[app-db].pre_hooks[0].when: unknown field",
        ),
        (
            a_job(post_hooks=[{"command": "x", "on_error": "fail"}]),
            "jobs[app-db].post_hooks[0].on_error: unknown field",
        ),
        (
            a_job(compression={"type": "gzip"}),
            "jobs[app-db].compression.type: must be 'zstd' or 'none', not 'gzip'",
        ),
        (a_job(compression={"level": 23}), "jobs[app-db].compression.level: 23, the limit is 22"),
        (
            a_job(retention={"keep_last": -1}),
            "jobs[app-db].retention.keep_last: -1 is below the minimum 0",
        ),
    ],
)
def test_values_outside_their_sets(job: dict[str, Any], expected: str) -> None:
    assert only_violation(a_config(job)) == expected


def test_retention_that_keeps_nothing_is_refused() -> None:
    found = only_violation(a_config(a_job(retention={"keep_last": 0, "keep_daily": 0})))
    assert found.startswith("jobs[app-db].retention: keeps no backup at all")
    assert parse_config(a_config(a_job(retention={"keep_last": 0, "keep_daily": 7})))


# --------------------------------------------------------------------------- env


def test_env_accepted() -> None:
    job = parse_config(a_config(a_job(env={"PGAPPNAME": "backupy", "_X1": ""}))).job("app-db")
    assert job.env == {"PGAPPNAME": "backupy", "_X1": ""}


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("1ABC", "not an environment variable name"),
        ("A-B", "not an environment variable name"),
        ("BACKUPY_STATUS", "reserved for the run context"),
        ("backupy_job", "reserved for the run context"),
    ],
)
def test_env_bad_keys(key: str, words: str) -> None:
    found = only_violation(a_config(a_job(env={key: "x"})))
    assert found.startswith("jobs[app-db].env")
    assert words in found


def test_env_value_with_nul_and_non_string() -> None:
    found = violations(a_config(a_job(env={"A": "x\x00y", "B": 5})))
    assert found == [
        "jobs[app-db].env.A: contains a NUL byte",
        "jobs[app-db].env.B: must be a string (quote it in YAML)",
    ]


# --------------------------------------------------------------------------- targets and storage


def test_all_target_types() -> None:
    targets = [
        {"type": "mysql", "host": "db", "database": "app", "user": "u", "password_file": "/pw"},
        {"type": "mariadb", "host": "db", "database": "app", "user": "u"},
        {"type": "redis", "host": "cache", "password_env": "REDIS_PASSWORD"},
        {"type": "sqlite", "path": "./var/app.db"},
        {"type": "mongodb", "uri": "mongodb://backup@db1,db2/app?replicaSet=rs0"},
        {"type": "mongodb", "host": "db", "database": "app", "user": "u", "password_env": "MP"},
    ]
    jobs = [a_job(id=f"job{n}", target=t) for n, t in enumerate(targets)]
    config = parse_config(a_config(*jobs))
    assert config.job("job0").target.port == 3306  # type: ignore[union-attr]
    redis_target = config.job("job2").target
    assert (redis_target.port, redis_target.db) == (6379, 0)  # type: ignore[union-attr]
    assert config.secret_env_names() == {"REDIS_PASSWORD", "MP"}


def test_target_errors_have_no_tag_segment() -> None:
    target = {"type": "postgresql", "host": "h", "port": 70000, "database": "d", "user": "u"}
    found = only_violation(a_config(a_job(target=target)))
    assert found == "jobs[app-db].target.port: 70000, the limit is 65535"


def test_unknown_target_type() -> None:
    found = only_violation(a_config(a_job(target={"type": "oracle"})))
    assert found.startswith("jobs[app-db].target: type must be one of 'postgresql'")


def test_password_env_and_file_exclusive() -> None:
    target = a_job()["target"] | {"password_file": "/run/secrets/pw"}
    found = only_violation(a_config(a_job(target=target)))
    assert found == (
        "jobs[app-db].target: password_env and password_file are mutually exclusive: set one"
    )


def test_secrets_never_accepted_or_echoed() -> None:
    uri_job = a_job(id="m", target={"type": "mongodb", "uri": "mongodb://u:hunter2@db/app"})
    options = ["--single-transaction", "-phunter2"]
    mysql = {"type": "mysql", "host": "h", "database": "d", "user": "u", "options": options}
    found = violations(a_config(uri_job, a_job(id="my", target=mysql)))
    assert found[0].startswith("jobs[m].target.uri: holds a password")
    assert found[1].startswith("jobs[my].target.options: a password does not go in options")
    assert not any("hunter2" in line for line in found)


def test_dash_names_refused() -> None:
    target = a_job()["target"] | {"database": "--help"}
    found = only_violation(a_config(a_job(target=target)))
    assert found.startswith("jobs[app-db].target.database: must not start with '-'")


def test_s3_storage() -> None:
    storage = {
        "type": "s3",
        "bucket": "backups",
        "endpoint_url": "http://minio:9000",
        "access_key_env": "S3_KEY",
        "secret_key_env": "S3_SECRET",
    }
    config = parse_config(a_config(storage=storage))
    assert config.storage.prefix == ""  # type: ignore[union-attr]
    assert config.secret_env_names() == {"APP_DB_PASSWORD", "S3_KEY", "S3_SECRET"}
    assert config.job("app-db").secret_env_names() == {"APP_DB_PASSWORD"}


def test_s3_keys_go_together() -> None:
    found = only_violation(a_config(storage={"type": "s3", "bucket": "b", "access_key_env": "K"}))
    assert found.startswith("storage: access_key_env and secret_key_env go together")


# --------------------------------------------------------------------------- all at once


def test_every_violation_reported_at_once() -> None:
    job = a_job(
        schedule="every night",
        pre_hooks=[{"command": "", "on_error": "fail"}],
        post_hooks=[{"command": "x", "timeout": "1h"}],
    )
    found = violations(a_config(job))
    assert found == [
        "jobs[app-db].schedule: 'every night' has 2 field(s); a schedule is 5 cron fields "
        "(minute hour day-of-month month day-of-week), in UTC",
        "jobs[app-db].pre_hooks[0].command: empty command; a hook needs a shell command",
        "jobs[app-db].post_hooks[0].timeout: 1h, the limit is 15m",
    ]


def test_errors_across_jobs_and_top_level() -> None:
    data = a_config(a_job(id="a", timeout="x"), a_job(id="b", queue=""), storage={"type": "ftp"})
    found = violations(data)
    assert len(found) == 3
    assert found[0].startswith("storage: type must be one of 'local', 's3'")
    assert found[1].startswith("jobs[a].timeout: ")
    assert found[2].startswith("jobs[b].queue: ")


def test_config_error_str_lists_violations() -> None:
    error = ConfigError(["a: b", "c: d"], "jobs.yaml")
    assert str(error) == "jobs.yaml: 2 violation(s)\n  a: b\n  c: d"


@pytest.mark.parametrize("data", [None, [], "jobs"])
def test_top_level_must_be_a_mapping(data: Any) -> None:
    assert "the top level must be a mapping" in only_violation(data)


# --------------------------------------------------------------------------- digests


def write(tmp_path: Path, data: Any, name: str = "jobs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reverse_keys(v) for v in value]
    return value


def test_digest_is_stable_across_key_order(tmp_path: Path) -> None:
    data = a_config(a_job(), a_job(id="other", env={"A": "1", "B": "2"}))
    first = load_config(write(tmp_path, data, "a.yaml"), limits=LIMITS)
    second = load_config(write(tmp_path, reverse_keys(data), "b.yaml"), limits=LIMITS)
    assert first.digest == second.digest
    assert first.job_digest("app-db") == second.job_digest("app-db")
    assert len(first.digest) == 64 and int(first.digest, 16) >= 0


def test_one_hook_change_changes_digests() -> None:
    before = parse_config(a_config())
    changed = copy.deepcopy(a_config())
    changed["jobs"][0]["pre_hooks"][0]["command"] = "echo pre2"
    after = parse_config(changed)
    assert before.digest != after.digest
    assert before.job_digest("app-db") != after.job_digest("app-db")


def test_job_digest_ignores_other_jobs() -> None:
    alone = parse_config(a_config(a_job()))
    with_b = parse_config(a_config(a_job(), a_job(id="b")))
    b_changed = parse_config(a_config(a_job(), a_job(id="b", post_hooks=hooks(2))))
    assert alone.job_digest("app-db") == with_b.job_digest("app-db")
    assert with_b.job_digest("app-db") == b_changed.job_digest("app-db")
    assert with_b.job_digest("b") != b_changed.job_digest("b")
    assert with_b.digest != b_changed.digest


def test_job_digest_covers_storage_and_encryption() -> None:
    base = parse_config(a_config())
    other_storage = parse_config(a_config(storage={"type": "local", "path": "/srv/backups"}))
    plain = parse_config(a_config(encryption="none"))
    digests = {c.job_digest("app-db") for c in (base, other_storage, plain)}
    assert len(digests) == 3


def test_digest_survives_a_round_trip() -> None:
    config = parse_config(a_config())
    again = parse_config(config.model_dump(mode="json"))
    assert again.digest == config.digest


def test_unknown_job_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no job 'nope' in this config"):
        parse_config(a_config()).job("nope")


def test_validated_config_is_frozen() -> None:
    config = parse_config(a_config())
    with pytest.raises(ValueError):
        config.job("app-db").pre_hooks[0].command = "rm -rf /"  # type: ignore[misc]


# --------------------------------------------------------------------------- loading files


def test_load_config_default_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, a_config())
    monkeypatch.setenv("BACKUPY_CONFIG", str(path))
    assert load_config().job("app-db")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.violations == [f"{path}: no such file"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("storage:\n  type: local\njobs: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (line,) = caught.value.violations
    assert line.startswith(f"{path}: YAML syntax error at line 4")


def test_duplicate_yaml_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("storage: {type: local, path: x}\nstorage: {type: local, path: y}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (line,) = caught.value.violations
    assert "line 2" in line and "duplicate key 'storage'" in line


def test_top_level_list_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, [1, 2])
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.violations == [f"{path}: the top level must be a mapping, got a list"]


def test_format_duration() -> None:
    assert [format_duration(s) for s in (30, 90, 300, 1800, 7200, 5400, 1.5)] == [
        "30s",
        "90s",
        "5m",
        "30m",
        "2h",
        "90m",
        "1.5s",
    ]


TARGETS = {
    "postgresql": {"type": "postgresql", "host": "db", "database": "app", "user": "backup"},
    "mysql": {"type": "mysql", "host": "db", "database": "app", "user": "backup"},
    "mariadb": {"type": "mariadb", "host": "db", "database": "app", "user": "backup"},
    "mongodb": {"type": "mongodb", "host": "db", "database": "app", "user": "backup"},
}


@pytest.mark.parametrize(
    ("kind", "option", "flag"),
    [
        ("postgresql", "--file=/tmp/x.dump", "--file"),
        ("postgresql", "-f", "-f"),
        ("postgresql", "--format=plain", "--format"),
        ("postgresql", "-Z9", "-Z"),
        ("mysql", "--result-file=/tmp/x.sql", "--result-file"),
        ("mariadb", "-T/tmp", "-T"),
        ("mongodb", "--out=/tmp/dump", "--out"),
        ("mongodb", "--archive=/tmp/a", "--archive"),
    ],
)
def test_options_that_break_the_artifact_stream_are_refused_at_load(
    kind: str, option: str, flag: str
) -> None:
    found = only_violation(a_config(a_job(target={**TARGETS[kind], "options": [option]})))
    assert found.startswith("jobs[app-db].target.options")
    assert f"{flag} is not allowed" in found
    assert option.partition("=")[2] not in found or "=" not in option  # the value is not echoed


@pytest.mark.parametrize(
    ("kind", "option"),
    [
        ("postgresql", "--exclude-table=audit_log"),
        ("postgresql", "--no-comments"),
        ("mysql", "--ignore-table=app.sessions"),
        ("mongodb", "--gzip"),
    ],
)
def test_ordinary_dump_options_pass(kind: str, option: str) -> None:
    parse_config(a_config(a_job(target={**TARGETS[kind], "options": [option]})), limits=LIMITS)
