"""Structured logs: JSON lines that can be followed by run across workers, with secrets masked.

``BACKUPY_LOG_FORMAT`` chooses the format of every worker and beat log line:

- ``text`` (the default): Celery's own format, with `` [run=… job=… step=…]`` appended when a
  run is known. Explicit opt-in to JSON keeps log-grepping habits (and tests) working.
- ``json``: one JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
  ``message``, and when known ``run_id``, ``job_id``, ``step``, ``task_id``, ``task_name``,
  plus ``host`` and ``pid``, and ``exc`` for a traceback. What a log shipper indexes.
- ``auto``: text on a terminal, JSON otherwise (a container, a file).

Where the run fields come from: a step sets them for the time it runs with :func:`log_context`
(``tasks.step_runner``, ``tasks.start_task``, ``tasks.finalize_task``); Celery's own lines about
a task (``Task … succeeded``) are written after that block has ended, so the filter falls back to
the arguments of the task the process is running, validated exactly as the task validates them
(a forged message's strings never become fields).

Redaction: every record's message and arguments (and then the finished line, which also covers
tracebacks) are passed through :class:`Redactor`, which masks

- credentials in URLs: ``scheme://user:secret@host`` → ``scheme://user:***@host``;
- age identities: ``AGE-SECRET-KEY-1…`` → ``AGE-SECRET-KEY-1***``;
- the values of the secrets this process holds: the variables the config names (``password_env``,
  S3 keys), the contents of ``password_file`` files, and every variable the hook runner keeps
  from hooks as secret (``tasks.hooks.is_secret_env``: ``*PASSWORD*``, ``*SECRET*``, broker
  URLs...). Values shorter than :data:`MIN_SECRET_LENGTH` are not masked: masking ``ab`` in
  every line would make logs unreadable and protect nothing.

Celery processes install this through the ``after_setup_logger`` / ``after_setup_task_logger``
signals (``workers.checks``): Celery still chooses the handlers, the log file and the level (``-l``,
``-f``); this module swaps the formatters and adds the filters. Pool processes are forked from the
main process and inherit them. Other processes (the CLI, the exporter) call
:func:`configure_logging`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

LOG_FORMAT_ENV = "BACKUPY_LOG_FORMAT"
LOG_FORMATS = ("text", "json", "auto")
DEFAULT_LOG_FORMAT = "text"
# Celery's default worker format, used in text mode when Celery gave us none.
DEFAULT_TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"

MASK = "***"
# A secret this short is not masked: see the module docstring.
MIN_SECRET_LENGTH = 4

CONTEXT_FIELDS = ("run_id", "job_id", "step")
TASK_FIELDS = ("task_id", "task_name")

# `scheme://user:password@` (user may be empty, as in `redis://:password@host`).
URL_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*):(?P<secret>[^\s/@]+)@"
)
# An age X25519 identity: the prefix, then bech32 characters (upper case by the spec; lower
# case too, since a bech32 decoder accepts either). Plugin identities (AGE-PLUGIN-…-1…) as well.
AGE_IDENTITY = re.compile(r"AGE-(?:SECRET-KEY|PLUGIN-[A-Z0-9-]+?)-1[0-9A-Z]+", re.IGNORECASE)
AGE_IDENTITY_MASK = "AGE-SECRET-KEY-1" + MASK

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("backupy_log_context", default=_EMPTY)
HOST = socket.gethostname()


# --------------------------------------------------------------------------- context


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within the block, every log record of this thread/task carries these fields."""
    current = dict(_context.get())
    current.update({key: str(value) for key, value in fields.items() if value is not None})
    token = _context.set(MappingProxyType(current))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get())


def _task_context() -> dict[str, str]:
    """The fields of the Celery task this process is running, if any (validated)."""
    try:
        from celery._state import get_current_task
    except ImportError:  # pragma: no cover - celery is a dependency
        return {}
    task = get_current_task()
    if task is None:
        return {}
    request = getattr(task, "request", None)
    fields: dict[str, str] = {"task_name": str(task.name)}
    task_id = getattr(request, "id", None)
    if task_id:
        fields["task_id"] = str(task_id)
    kwargs = getattr(request, "kwargs", None)
    if isinstance(kwargs, Mapping):
        fields.update(_run_fields(task.name, getattr(request, "args", None) or (), kwargs))
    return fields


def _run_fields(task_name: str, args: Any, kwargs: Mapping[str, Any]) -> dict[str, str]:
    """Run fields from a message, only when the message is valid (no attacker text in fields)."""
    from tasks.references import JOB_ID_PATTERN, PHASES, Refused, parse_reference
    from tasks.runs import is_run_id

    if task_name == "backupy.start_run":
        job_id, run_id = kwargs.get("job_id"), kwargs.get("run_id")
        fields = {"step": "start"}
        if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id):
            fields["job_id"] = job_id
        if is_run_id(run_id):
            fields["run_id"] = run_id
        return fields
    if not task_name.startswith("backupy."):
        return {}
    try:
        ref = parse_reference(tuple(args), kwargs, PHASES)
    except Refused:
        return {}
    return {"run_id": ref.run_id, "job_id": ref.job_id, "step": ref.step}


class ContextFilter(logging.Filter):
    """Adds ``run_id``, ``job_id``, ``step``, ``task_id``, ``task_name`` (None when unknown)
    and ``host`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        known = {**_safe_task_context(), **_context.get()}
        for name in (*CONTEXT_FIELDS, *TASK_FIELDS):
            if getattr(record, name, None) is None:
                setattr(record, name, known.get(name))
        if getattr(record, "host", None) is None:
            record.host = HOST
        return True


def _safe_task_context() -> dict[str, str]:
    try:
        return _task_context()
    except Exception:  # logging must never fail because the context could not be read
        return {}


# --------------------------------------------------------------------------- redaction


class Redactor:
    """Masks credentials in URLs, age identities and the given secret values in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {value for value in secrets if value and len(value) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(values, key=len, reverse=True)
        self.secrets = tuple(ordered)
        self._pattern = (
            re.compile("|".join(re.escape(value) for value in ordered)) if ordered else None
        )

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        if "://" in text:
            text = URL_CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text)
        if "AGE-" in text.upper():
            text = AGE_IDENTITY.sub(AGE_IDENTITY_MASK, text)
        return text

    def value(self, value: Any) -> Any:
        """A log argument with secrets masked; non-strings are kept unless they show one."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, int | float | bool) or value is None:
            return value
        try:
            shown = str(value)
        except Exception:
            return value
        masked = self(shown)
        return value if masked == shown else masked


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and arguments before any handler formats it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        elif record.msg is not None:
            record.msg = redact.value(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {key: redact.value(value) for key, value in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(redact.value(value) for value in record.args)
        data = getattr(record, "data", None)  # Celery's trace puts its log arguments here too
        if isinstance(data, Mapping):
            record.data = {key: redact.value(value) for key, value in data.items()}
        return True


def secret_values(environ: Mapping[str, str] | None = None) -> set[str]:
    """Every secret value this process holds that could end up in a log line."""
    from tasks.hooks import is_secret_env

    env = os.environ if environ is None else environ
    names, files = _config_secret_sources()
    found: set[str] = set()
    for name, value in env.items():
        if not value or name.upper().endswith("_FILE"):
            continue  # a path names a secret, it is not one
        if not is_secret_env(name, value, names):
            continue
        if "://" in value:
            found.update(_url_secrets(value))  # the password, not the host and path
        else:
            found.add(value)
    for path in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            with open(path, encoding="utf-8") as stream:
                text = stream.read(64 * 1024)
            found.add(text.removesuffix("\n").removesuffix("\r"))
    return found


def _url_secrets(value: str) -> set[str]:
    found = {m["secret"] for m in URL_CREDENTIALS.finditer(value)}
    with contextlib.suppress(ValueError):
        password = urlsplit(value).password
        if password:
            found |= {password, unquote(password)}
    return found


def _config_secret_sources() -> tuple[set[str], set[str]]:
    """The config's password_env (and S3 key) variable names and password_file paths."""
    try:
        from tasks import context

        cfg = context.config()
    except Exception:  # an invalid config is reported by the worker itself, not here
        return set(), set()
    files = {
        str(os.path.expanduser(path))
        for job in cfg.jobs
        if (path := getattr(job.target, "password_file", None))
    }
    return set(cfg.secret_env_names()), files


# --------------------------------------------------------------------------- formatters


def _iso(created: float) -> str:
    stamp = datetime.fromtimestamp(created, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields that are not known are left out."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} % {record.args!r}"
        payload: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for name in (*CONTEXT_FIELDS, *TASK_FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                payload[name] = value
        payload["host"] = getattr(record, "host", None) or HOST
        payload["pid"] = record.process
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(payload, ensure_ascii=False, default=str)
        # json.dumps escapes newlines, so the line stays one line; masking after encoding
        # also covers the traceback and anything a custom field carried.
        return self.redactor(line)


class TextFormatter(logging.Formatter):
    """Another formatter's line (Celery's own, colours and all), with the run fields appended and
    the secrets masked."""

    def __init__(
        self, inner: logging.Formatter | None = None, redactor: Redactor | None = None
    ) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter(DEFAULT_TEXT_FORMAT)
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        fields = [
            f"{label}={value}"
            for label, name in (("run", "run_id"), ("job", "job_id"), ("step", "step"))
            if (value := getattr(record, name, None)) is not None
        ]
        if fields:
            first, newline, rest = line.partition("\n")
            line = f"{first} [{' '.join(fields)}]{newline}{rest}"
        return self.redactor(line)


# --------------------------------------------------------------------------- installing


def log_format(environ: Mapping[str, str] | None = None, stream: Any = None) -> str:
    """``text`` or ``json`` from ``BACKUPY_LOG_FORMAT`` (``auto``: JSON unless on a terminal)."""
    env = os.environ if environ is None else environ
    chosen = (env.get(LOG_FORMAT_ENV) or DEFAULT_LOG_FORMAT).strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}: {chosen!r}")
    if chosen == "auto":
        target = stream if stream is not None else sys.stderr
        isatty = getattr(target, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    return chosen


def _our(handler: logging.Handler) -> bool:
    return any(isinstance(f, RedactingFilter) for f in handler.filters)


def install_on_handler(
    handler: logging.Handler, fmt: str, redactor: Redactor, text_format: str | None = None
) -> None:
    """Make one handler write our format, with the context and redaction filters (idempotent)."""
    current = handler.formatter
    if fmt == "json":
        handler.setFormatter(JsonFormatter(redactor))
    else:
        if isinstance(current, TextFormatter | JsonFormatter):
            inner = current.inner if isinstance(current, TextFormatter) else None
        else:
            inner = current
        fallback = logging.Formatter(text_format or DEFAULT_TEXT_FORMAT)
        handler.setFormatter(TextFormatter(inner or fallback, redactor))
    if not _our(handler):
        handler.addFilter(ContextFilter())
        handler.addFilter(RedactingFilter(redactor))
    else:
        for existing in handler.filters:
            if isinstance(existing, RedactingFilter):
                existing.redactor = redactor


def install_on_logger(
    logger: logging.Logger | None,
    text_format: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Apply our formatters and filters to every handler of ``logger`` (Celery's signals)."""
    if logger is None:
        return
    redactor = Redactor(secret_values(environ))
    for handler in logger.handlers:
        stream = getattr(handler, "stream", None)
        install_on_handler(handler, log_format(environ, stream), redactor, text_format)


def configure_logging(
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """For processes Celery does not set up (CLI, exporter): one stderr handler on the root."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if _our(h)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        root.addHandler(handler)
    redactor = Redactor(secret_values(environ))
    install_on_handler(
        handler, log_format(environ, getattr(handler, "stream", None)), redactor, None
    )
    root.setLevel(level)
    return handler
