"""workers.logs: JSON and text formats, run fields, and secrets masked in every record."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tasks import context
from workers import logs
from workers.logs import (
    ContextFilter,
    JsonFormatter,
    RedactingFilter,
    Redactor,
    TextFormatter,
    install_on_handler,
    install_on_logger,
    log_context,
    log_format,
    secret_values,
)

RUN_ID = "20240101T030000Z-0a1b2c3d"
AGE_KEY = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZGZPXNV"


class Capture:
    """A logger with one handler set up as a worker's would be; ``lines`` are what it wrote."""

    def __init__(self, fmt: str, redactor: Redactor | None = None) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        install_on_handler(self.handler, fmt, redactor or Redactor())
        self.logger = logging.getLogger(f"backupy.test.{id(self)}")
        self.logger.handlers = [self.handler]
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    @property
    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A config naming a password variable with no "secret" word in its name, and a file."""
    password_file = tmp_path / "mysql.pw"
    password_file.write_text("file-held-pw-77\n")
    document = {
        "storage": {"type": "local", "path": str(tmp_path / "backups")},
        "encryption": "none",
        "jobs": [
            {
                "id": "pg",
                "schedule": "0 3 * * *",
                "target": {
                    "type": "postgresql",
                    "host": "db",
                    "database": "app",
                    "user": "backup",
                    "password_env": "APP_DB_PW",
                },
            },
            {
                "id": "my",
                "schedule": "0 4 * * *",
                "target": {
                    "type": "mysql",
                    "host": "db",
                    "database": "app",
                    "user": "backup",
                    "password_file": str(password_file),
                },
            },
        ],
    }
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("BACKUPY_CONFIG", str(path))
    context.reset()
    yield path
    context.reset()


# --------------------------------------------------------------------------- formats


def test_json_lines_carry_the_fields_and_the_run_context_when_known() -> None:
    capture = Capture("json")
    capture.logger.info("before %s", "the run")
    with log_context(run_id=RUN_ID, job_id="app-db", step="pre.1"):
        capture.logger.warning("hook %d of %s", 1, "app-db")
        with log_context(step="dump"):
            capture.logger.info("nested")
    capture.logger.info("after")

    before, inside, nested, after = capture.records()
    for record in (before, inside, nested, after):
        assert {"ts", "level", "logger", "message", "host", "pid"} <= set(record)
        assert record["ts"].endswith("Z") and "T" in record["ts"]
    assert before["message"] == "before the run" and before["level"] == "INFO"
    assert not {"run_id", "job_id", "step"} & set(before)
    assert inside["message"] == "hook 1 of app-db" and inside["level"] == "WARNING"
    assert (inside["run_id"], inside["job_id"], inside["step"]) == (RUN_ID, "app-db", "pre.1")
    assert (nested["run_id"], nested["step"]) == (RUN_ID, "dump")
    assert not {"run_id", "job_id", "step"} & set(after)
    assert inside["logger"] == capture.logger.name


def test_a_json_record_is_one_line_even_with_newlines_and_a_traceback() -> None:
    capture = Capture("json")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        capture.logger.exception("failed:\n%s", "multi\nline")
    (record,) = capture.records()
    assert record["message"] == "failed:\nmulti\nline"
    assert "RuntimeError: boom" in record["exc"]


def test_text_format_appends_the_run_fields() -> None:
    capture = Capture("text")
    with log_context(run_id=RUN_ID, job_id="app-db", step="finalize"):
        capture.logger.info("ended success")
    capture.logger.info("no run")
    inside, outside = capture.lines
    assert inside.endswith(f"ended success [run={RUN_ID} job=app-db step=finalize]")
    assert outside.endswith("no run") and "[run=" not in outside


def test_log_format_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert log_format({}) == "text"
    assert log_format({"BACKUPY_LOG_FORMAT": "JSON"}) == "json"
    assert log_format({"BACKUPY_LOG_FORMAT": "auto"}, Tty()) == "text"
    assert log_format({"BACKUPY_LOG_FORMAT": "auto"}, io.StringIO()) == "json"
    with pytest.raises(ValueError, match="BACKUPY_LOG_FORMAT"):
        log_format({"BACKUPY_LOG_FORMAT": "xml"})


def test_installing_twice_adds_no_second_filter() -> None:
    logger = logging.getLogger("backupy.test.twice")
    handler = logging.StreamHandler(io.StringIO())
    logger.handlers = [handler]
    install_on_logger(logger, None, environ={"BACKUPY_LOG_FORMAT": "json"})
    install_on_logger(logger, None, environ={"BACKUPY_LOG_FORMAT": "json"})
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    assert sum(isinstance(f, ContextFilter) for f in handler.filters) == 1
    assert isinstance(handler.formatter, JsonFormatter)
    install_on_logger(logger, "%(message)s", environ={})
    assert isinstance(handler.formatter, TextFormatter)


def test_run_fields_come_from_a_valid_task_message_only() -> None:
    digest = "a" * 64
    valid = {"run_id": RUN_ID, "job_id": "app-db", "phase": "post", "index": 2, "digest": digest}
    assert logs._run_fields("backupy.hook", (), valid) == {
        "run_id": RUN_ID,
        "job_id": "app-db",
        "step": "post.2",
    }
    forged = {**valid, "command": "rm -rf /"}
    assert logs._run_fields("backupy.hook", (), forged) == {}
    assert logs._run_fields("backupy.hook", (), {**valid, "run_id": "x\ny"}) == {}
    start = logs._run_fields("backupy.start_run", (), {"job_id": "app-db", "run_id": "bad id"})
    assert start == {"job_id": "app-db", "step": "start"}


def test_celery_signals_install_the_logging_setup() -> None:
    from celery import signals

    import workers.checks

    for signal in (signals.after_setup_logger, signals.after_setup_task_logger):
        receivers = [ref() for _, ref in signal.receivers]
        assert workers.checks.structured_logs in receivers


# --------------------------------------------------------------------------- redaction


def test_the_password_a_config_names_is_masked(
    config_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_DB_PW", "pg-pass-31337")
    secrets = secret_values()
    assert {"pg-pass-31337", "file-held-pw-77"} <= secrets
    capture = Capture("json", Redactor(secrets))
    capture.logger.error("connect failed with %s", "pg-pass-31337")
    capture.logger.error("password file says file-held-pw-77!")
    text = capture.stream.getvalue()
    assert "pg-pass-31337" not in text and "file-held-pw-77" not in text
    first, second = capture.records()
    assert first["message"] == "connect failed with ***"
    assert second["message"] == "password file says ***!"


def test_secret_variables_by_name_are_masked_but_paths_and_plain_urls_are_kept() -> None:
    env = {
        "S3_SECRET": "s3-secret-value",
        "SOME_TOKEN": "tok-123456",
        "BACKUPY_BROKER_URL": "amqp://backup:broker-pw-9@rabbit:5672//",
        "BACKUPY_REDIS_URL": "redis://127.0.0.1:6379/0",
        "BACKUPY_AGE_IDENTITY_FILE": "/etc/backupy/key.txt",
        "SHORT_PASSWORD": "ab",
        "HOME": "/root",
    }
    secrets = secret_values(env)
    assert {"s3-secret-value", "tok-123456", "broker-pw-9"} <= secrets
    assert "redis://127.0.0.1:6379/0" not in secrets
    assert "/etc/backupy/key.txt" not in secrets
    redact = Redactor(secrets)
    assert redact("at redis://127.0.0.1:6379/0 and /etc/backupy/key.txt") == (
        "at redis://127.0.0.1:6379/0 and /etc/backupy/key.txt"
    )
    assert redact("ab abc") == "ab abc"  # too short to mask
    assert redact("key s3-secret-value tok-123456") == "key *** ***"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:s3cret@host/1", "redis://:***@host/1"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("see https://a:b%40c@x.example/p?q=1 now", "see https://a:***@x.example/p?q=1 now"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("user:pass@host (no scheme)", "user:pass@host (no scheme)"),
    ],
)
def test_credentials_in_urls_are_masked(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


def test_an_age_identity_is_masked_wherever_it_appears() -> None:
    capture = Capture("json")
    capture.logger.info("identity %s", AGE_KEY)
    capture.logger.info("inline " + AGE_KEY.lower())
    capture.logger.info("dict %(key)s", {"key": AGE_KEY})
    text = capture.stream.getvalue()
    assert AGE_KEY not in text and AGE_KEY.lower() not in text
    assert [r["message"] for r in capture.records()] == [
        "identity AGE-SECRET-KEY-1***",
        "inline AGE-SECRET-KEY-1***",
        "dict AGE-SECRET-KEY-1***",
    ]


def test_the_filter_masks_message_args_and_keeps_their_types() -> None:
    redact = Redactor(["hunter2-long"])
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "%s has %d rows from %r", ("hunter2-long", 3, None), None
    )
    RedactingFilter(redact).filter(record)
    assert record.args == ("***", 3, None)
    assert record.getMessage() == "*** has 3 rows from None"

    class Shows:
        def __str__(self) -> str:
            return "object holding redis://u:hunter2-long@h"

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (Shows(),), None)
    RedactingFilter(redact).filter(record)
    assert record.getMessage() == "object holding redis://u:***@h"


def test_tracebacks_are_masked_too() -> None:
    capture = Capture("text", Redactor(["db-pass-4242"]))
    try:
        raise ConnectionError("cannot reach postgresql://backup:db-pass-4242@db/app")
    except ConnectionError:
        capture.logger.exception("dump failed")
    text = capture.stream.getvalue()
    assert "db-pass-4242" not in text
    assert "postgresql://backup:***@db/app" in text
