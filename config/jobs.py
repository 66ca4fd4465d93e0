"""The job config: what to back up, when, where to, and the hooks around it.

See DESIGN.md "Config file" for the contract.

The file is read once per process and validated completely before anything runs. Three decisions
shape this module:

* **Every rule is checked at load time, and every violation is reported at once.** An operator
  fixing a config wants the whole list, not one error per attempt, so pydantic's errors are
  mapped to one plain line each (``jobs[app-db].pre_hooks[3].command: 5000 bytes, the limit is
  4096``) and collected into one :class:`ConfigError`. Rules that span fields (hook count,
  duplicate ids) are checked on the raw input so they are reported even when other fields of the
  same job are wrong.
* **The hook limits come from the host, not the file.** :class:`config.limits.Limits` is handed
  to pydantic through the validation context (``context={"limits": limits}``), so a job may ask
  for less than a cap but never more, and the host's operator moves the caps through the
  environment. The worker checks the same rules again before it runs a hook
  (:func:`command_violation` is the shared check).
* **The file holds no secret values.** Passwords and keys are referenced by environment variable
  name or file path only; a MongoDB URI with a password in it and a password passed as a dump-tool
  option are refused. So no error message, digest or run record can leak one, and messages never
  echo free-form input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

import yaml
from croniter import croniter
from croniter.croniter import CroniterBadDateError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from config.limits import Limits, load_limits, parse_duration
from config.tool_options import (
    MONGODB_REFUSED,
    MYSQL_REFUSED,
    POSTGRESQL_REFUSED,
    matching_flag,
)

DEFAULT_CONFIG_PATH = "config/jobs.yaml"
CONFIG_PATH_ENV = "BACKUPY_CONFIG"

# Job ids and queue names end up in Redis keys, storage paths and Celery queue names: keep them
# to a small, path-safe alphabet. ``fullmatch`` is used everywhere, so a trailing newline fails.
JOB_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The run context (BACKUPY_JOB, BACKUPY_RUN_ID, ...) is set by the hook runner; a job's own ``env``
# must not be able to forge or shadow it.
RESERVED_ENV_PREFIX = "BACKUPY_"

DUMP_TIMEOUT_DEFAULT_SECONDS = 3600.0


class ConfigError(Exception):
    """The config is not usable; ``violations`` lists every problem, one plain line each."""

    def __init__(self, violations: list[str], source: str | None = None) -> None:
        self.violations = list(violations)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.source or 'config'}: {len(self.violations)} violation(s)"
        return "\n".join([head, *(f"  {line}" for line in self.violations)])


# --------------------------------------------------------------------------- rule helpers


def format_duration(seconds: float) -> str:
    """Seconds → the shortest exact form an operator would write: ``30m``, ``2h``, ``90s``."""
    if seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("h", 3600), ("m", 60)):
            if whole and whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    return f"{seconds:g}s"


def command_violation(command: str, limits: Limits) -> str | None:
    """Why a hook command is refused, or None: shared by config load and the worker's re-check.

    The size is counted in UTF-8 bytes, because the limit protects argv and memory, which hold
    bytes: 2000 × "é" is 4000 bytes.
    """
    if not command.strip():
        return "empty command; a hook needs a shell command"
    if "\x00" in command:
        return f"contains a NUL byte (at character {command.index(chr(0))}); /bin/sh cannot run it"
    size = len(command.encode("utf-8"))
    if size > limits.command_max_bytes:
        return f"{size} bytes, the limit is {limits.command_max_bytes}"
    return None


def _rule(kind: str, message: str) -> PydanticCustomError:
    """A violation whose message is already plain words (no template fields)."""
    return PydanticCustomError(kind, message)


def _limits(info: ValidationInfo) -> Limits:
    """The caps for this validation: the context's, or this host's defaults + overrides."""
    context = info.context if isinstance(info.context, Mapping) else {}
    limits = context.get("limits")
    return limits if isinstance(limits, Limits) else load_limits()


def _duration(value: Any) -> float:
    """``30s`` / ``5m`` / ``2h`` / seconds → float seconds, as a pydantic violation on failure."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        short = len(repr(value)) <= 40  # the parser's message quotes the value: keep it short
        message = str(exc) if short else "not a duration (use 30s, 5m, 2h or seconds)"
        raise _rule("duration", message) from None


def _env_name(value: str) -> str:
    if not ENV_NAME_PATTERN.fullmatch(value):
        raise _rule("env_name", "not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise _rule("nul_byte", "contains a NUL byte")
    return value


def _plain_name(value: str) -> str:
    """Host, database and user names: non-empty, and never read as a dump-tool option."""
    _no_nul(value)
    if not value.strip():
        raise _rule("empty", "must not be empty")
    if value.startswith("-"):
        raise _rule("dash", "must not start with '-' (it would be read as an option)")
    return value


def _nonempty(value: str) -> str:
    _no_nul(value)
    if not value.strip():
        raise _rule("empty", "must not be empty")
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
EnvName = Annotated[str, AfterValidator(_env_name)]
PlainName = Annotated[str, AfterValidator(_plain_name)]
NonEmpty = Annotated[str, AfterValidator(_nonempty)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]


class _Model(BaseModel):
    """Unknown fields are errors (a typo must not silently drop a hook); validated is final."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- storage, encryption


class LocalStorage(_Model):
    """A directory on the worker host (relative paths are relative to the working directory)."""

    type: Literal["local"]
    path: NonEmpty


class S3Storage(_Model):
    """Any S3-compatible endpoint. Keys come from the named variables, or the default AWS chain."""

    type: Literal["s3"]
    bucket: NonEmpty
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_env: EnvName | None = None
    secret_key_env: EnvName | None = None

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> S3Storage:
        if (self.access_key_env is None) != (self.secret_key_env is None):
            raise _rule(
                "s3_keys",
                "access_key_env and secret_key_env go together: set both or neither",
            )
        return self


Storage = Annotated[LocalStorage | S3Storage, Field(discriminator="type")]


def _age_recipient(value: str) -> str:
    from pyrage import x25519

    try:
        x25519.Recipient.from_str(value)
    except Exception:
        raise _rule("age_recipient", "not a valid age X25519 recipient (age1...)") from None
    return value


class AgeEncryption(_Model):
    """Public keys only: a worker can write backups but never read them back."""

    recipients: Annotated[list[Annotated[str, AfterValidator(_age_recipient)]], Field(min_length=1)]


def _encryption_kind(value: Any) -> str | None:
    if value == "none":
        return "none"
    if isinstance(value, dict | AgeEncryption):
        return "age"
    return None


# ``encryption: none`` must be said explicitly: leaving the field out is an error, not plaintext.
Encryption = Annotated[
    Annotated[Literal["none"], Tag("none")] | Annotated[AgeEncryption, Tag("age")],
    Discriminator(
        _encryption_kind,
        custom_error_type="encryption",
        custom_error_message="must be 'none' or {recipients: [age1...]}",
    ),
]


# --------------------------------------------------------------------------- targets


class _PasswordRef(_Model):
    """A password by reference only: the variable's name or the file's path, at most one."""

    password_env: EnvName | None = None
    password_file: NonEmpty | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> _PasswordRef:
        if self.password_env is not None and self.password_file is not None:
            raise _rule(
                "password_source",
                "password_env and password_file are mutually exclusive: set one",
            )
        return self


class _OptionsTarget(_PasswordRef):
    """Extra dump-tool options; a password must never travel in them (it would be in argv)."""

    # The short flag that takes a password for this tool (mysqldump / mongodump: -p).
    short_password_flag: ClassVar[str | None] = None
    # Options that would break the artifact stream (config.tool_options).
    refused_options: ClassVar[tuple[str, ...]] = ()
    options: list[str] = []

    @field_validator("options")
    @classmethod
    def _no_password_options(cls, options: list[str]) -> list[str]:
        for option in options:
            _no_nul(option)
            flag = cls.short_password_flag
            if option.lower().startswith("--password") or (flag and option.startswith(flag)):
                raise _rule(
                    "password_option",
                    "a password does not go in options (argv is visible to every user of the "
                    "host): use password_env or password_file",
                )
            flag = matching_flag(option, cls.refused_options)
            if flag is not None:
                raise _rule(
                    "dump_option",
                    f"{flag} is not allowed: the dump always goes, in its own format, to the "
                    "artifact stream",
                )
        return options


class PostgresTarget(_OptionsTarget):
    refused_options: ClassVar[tuple[str, ...]] = POSTGRESQL_REFUSED
    type: Literal["postgresql"]
    host: PlainName
    port: Port = 5432
    database: PlainName
    user: PlainName


class MySQLTarget(_OptionsTarget):
    short_password_flag: ClassVar[str | None] = "-p"
    refused_options: ClassVar[tuple[str, ...]] = MYSQL_REFUSED
    type: Literal["mysql"]
    host: PlainName
    port: Port = 3306
    database: PlainName
    user: PlainName


class MariaDBTarget(MySQLTarget):
    type: Literal["mariadb"]  # type: ignore[assignment]


class RedisTarget(_PasswordRef):
    type: Literal["redis"]
    host: PlainName
    port: Port = 6379
    db: Annotated[StrictInt, Field(ge=0)] = 0
    user: PlainName | None = None


class SQLiteTarget(_Model):
    type: Literal["sqlite"]
    path: NonEmpty


def _uri_without_password(uri: str) -> str:
    _no_nul(uri)
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        raise _rule("mongodb_uri", "not a valid URI") from None
    if parts.scheme not in ("mongodb", "mongodb+srv"):
        raise _rule("mongodb_uri", "must start with mongodb:// or mongodb+srv://")
    if password is not None:
        raise _rule(
            "mongodb_uri",
            "holds a password; put it in password_env or password_file instead",
        )
    return uri


class MongoTarget(_OptionsTarget):
    """Either ``uri`` (without a password) or host/port/database/user."""

    short_password_flag: ClassVar[str | None] = "-p"
    refused_options: ClassVar[tuple[str, ...]] = MONGODB_REFUSED
    type: Literal["mongodb"]
    uri: Annotated[str, AfterValidator(_uri_without_password)] | None = None
    host: PlainName | None = None
    port: Port = 27017
    database: PlainName | None = None
    user: PlainName | None = None

    @model_validator(mode="after")
    def _uri_or_host(self) -> MongoTarget:
        if (self.uri is None) == (self.host is None):
            raise _rule("mongodb_address", "set either uri or host (one of them, not both)")
        return self


_TARGET_TYPES = (
    PostgresTarget,
    MySQLTarget,
    MariaDBTarget,
    RedisTarget,
    SQLiteTarget,
    MongoTarget,
)
Target = Annotated[
    PostgresTarget | MySQLTarget | MariaDBTarget | RedisTarget | SQLiteTarget | MongoTarget,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- hooks


class _Hook(_Model):
    """A shell command run with ``/bin/sh -c`` verbatim; its timeout is capped by the host."""

    command: str
    # None → the host's default (validate_default makes the validator fill it in).
    timeout: float = Field(default=None, validate_default=True)  # type: ignore[assignment]

    @field_validator("command")
    @classmethod
    def _check_command(cls, command: str, info: ValidationInfo) -> str:
        problem = command_violation(command, _limits(info))
        if problem:
            raise _rule("command", problem)
        return command

    @field_validator("timeout", mode="before")
    @classmethod
    def _check_timeout(cls, value: Any, info: ValidationInfo) -> float:
        limits = _limits(info)
        if value is None:
            # An operator who lowers the cap below the default lowers the default with it.
            return float(min(limits.hook_timeout_default, limits.hook_timeout_max))
        seconds = _duration(value)
        if seconds > limits.hook_timeout_max:
            cap = format_duration(limits.hook_timeout_max)
            raise _rule("hook_timeout", f"{format_duration(seconds)}, the limit is {cap}")
        return seconds


class PreHook(_Hook):
    """``on_error: fail`` (default) skips the dump when the hook fails; ``continue`` records it."""

    on_error: Literal["fail", "continue"] = "fail"


class PostHook(_Hook):
    """Runs after the dump whatever happened (``always``), or only on ``success``/``failure``."""

    when: Literal["always", "success", "failure"] = "always"


# --------------------------------------------------------------------------- job


def _env_key(key: str) -> str:
    _env_name(key)
    if key.upper().startswith(RESERVED_ENV_PREFIX):
        raise _rule(
            "env_reserved",
            f"names starting with {RESERVED_ENV_PREFIX} are reserved for the run context",
        )
    return key


EnvKey = Annotated[str, AfterValidator(_env_key)]
EnvValue = Annotated[str, AfterValidator(_no_nul)]


class Compression(_Model):
    type: Literal["zstd", "none"] = "zstd"
    level: Annotated[StrictInt, Field(ge=1, le=22)] = 3


class Retention(_Model):
    """How many backups to keep; a field left out does not limit anything."""

    keep_last: Annotated[StrictInt, Field(ge=0)] | None = None
    keep_daily: Annotated[StrictInt, Field(ge=0)] | None = None
    keep_weekly: Annotated[StrictInt, Field(ge=0)] | None = None
    keep_monthly: Annotated[StrictInt, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _keeps_something(self) -> Retention:
        values = [v for v in self.model_dump().values() if v is not None]
        if values and not any(values):
            # All zeros would let retention delete the backup the run has just made.
            raise _rule("retention", "keeps no backup at all: set at least one keep_* to 1 or more")
        return self


class Job(_Model):
    """One database, its schedule, and the hooks around its dump."""

    id: str
    schedule: str
    queue: str = "backups"
    target: Target
    timeout: Duration = DUMP_TIMEOUT_DEFAULT_SECONDS
    hook_order: Literal["parallel", "sequential"] = "parallel"
    # None → the host's cap (validate_default makes the validator fill it in).
    hooks_budget: float = Field(default=None, validate_default=True)  # type: ignore[assignment]
    pre_hooks: list[PreHook] = []
    post_hooks: list[PostHook] = []
    env: dict[EnvKey, EnvValue] = {}
    compression: Compression = Compression()
    retention: Retention | None = None

    @field_validator("id", "queue")
    @classmethod
    def _check_name(cls, value: str, info: ValidationInfo) -> str:
        if not JOB_ID_PATTERN.fullmatch(value):
            raise _rule(
                "name",
                f"{_show(value)} is not a valid {info.field_name} "
                "(lowercase letters, digits, '_' and '-', starting with a letter or digit, "
                "at most 64)",
            )
        return value

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, schedule: str) -> str:
        problem = cron_violation(schedule)
        if problem:
            raise _rule("schedule", problem)
        return schedule

    @field_validator("hooks_budget", mode="before")
    @classmethod
    def _check_budget(cls, value: Any, info: ValidationInfo) -> float:
        limits = _limits(info)
        if value is None:
            return float(limits.hooks_total_budget)
        seconds = _duration(value)
        if seconds > limits.hooks_total_budget:
            raise _rule(
                "hooks_budget",
                f"{format_duration(seconds)}, the limit is "
                f"{format_duration(limits.hooks_total_budget)}",
            )
        return seconds

    @model_validator(mode="wrap")
    @classmethod
    def _check_hook_count(
        cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Job:
        """Count on the raw lists, so the count is reported even when a hook itself is wrong."""
        extra: list[InitErrorDetails] = []
        if isinstance(data, Mapping):
            pre, post = _length(data.get("pre_hooks")), _length(data.get("post_hooks"))
            cap = _limits(info).hooks_max_count
            if pre + post > cap:
                message = f"{pre + post} hooks ({pre} pre + {post} post), the limit is {cap}"
                extra.append(_detail((), _rule("hook_count", message)))
        return _run_with_extra(handler, data, extra, cls.__name__)

    def secret_env_names(self) -> set[str]:
        """Variables holding this job's database password: kept out of hook environments."""
        name = getattr(self.target, "password_env", None)
        return {name} if name else set()


def cron_violation(schedule: str) -> str | None:
    """Why a schedule is refused, or None. Five fields, UTC, and it must fire at some point.

    The expression must mean the same to croniter (``backupy jobs``' next run times) and to
    Celery beat's ``crontab`` (which triggers the runs). They differ in two ways, both refused
    here rather than discovered when beat starts or when a run does not happen: Celery does not
    know croniter's extensions (``L``, ``#``, ``?``, ``7`` for Sunday), and when both
    day-of-month and day-of-week are restricted, cron fires on either while Celery fires only on
    days matching both.
    """
    fields = schedule.split()
    if len(fields) != 5:
        return (
            f"{_show(schedule)} has {len(fields)} field(s); a schedule is 5 cron fields "
            "(minute hour day-of-month month day-of-week), in UTC"
        )
    if not croniter.is_valid(schedule):
        return f"{_show(schedule)} is not a valid cron expression"
    if fields[2] != "*" and fields[4] != "*":
        return (
            f"{_show(schedule)} restricts both day-of-month and day-of-week, which cron and "
            "Celery beat read differently (either vs both): restrict only one"
        )
    try:
        croniter(schedule, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        return f"{_show(schedule)} never fires"
    celery_problem = _celery_cron_violation(fields)
    if celery_problem:
        return f"{_show(schedule)} is not accepted by Celery beat: {celery_problem}"
    return None


def _celery_cron_violation(fields: list[str]) -> str | None:
    from celery.schedules import crontab  # imported late: only schedules need Celery here

    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except Exception as exc:  # ValueError, or celery's ParseException (not a ValueError)
        return str(exc) or type(exc).__name__
    return None


# --------------------------------------------------------------------------- config


class Config(_Model):
    """The whole file: storage, encryption and the jobs.

    Digests: task messages carry a digest so that a worker refuses work planned from a config
    other than its own (DESIGN.md "The broker carries references, never commands"). The digest a
    message carries is :meth:`job_digest` — the job plus the storage and encryption it writes with
    — not the whole file's :attr:`digest`. So adding job B on one host does not make job A's
    messages refused elsewhere, while any change to job A (a hook, a timeout) or to where and how
    its backups are written does. Both digests cover the *effective* values, defaults included,
    so two hosts whose operators set different caps (say a different hook budget) disagree on
    the digest of a job that relies on the default: that is drift, reported, not guessed around.
    """

    storage: Storage
    encryption: Encryption
    jobs: list[Job]

    @field_validator("jobs", mode="wrap")
    @classmethod
    def _unique_ids(cls, jobs: Any, handler: ValidatorFunctionWrapHandler) -> list[Job]:
        """Checked on the raw list, so a duplicate is reported beside the jobs' other errors."""
        extra: list[InitErrorDetails] = []
        if isinstance(jobs, list):
            ids = [j.get("id") if isinstance(j, Mapping) else None for j in jobs]
            counts = Counter(i for i in ids if isinstance(i, str))
            for job_id, count in counts.items():
                if count > 1:
                    where = ", ".join(f"jobs[{n}]" for n, i in enumerate(ids) if i == job_id)
                    message = f"duplicate job id {job_id!r} ({count} times: {where})"
                    extra.append(_detail((), _rule("duplicate_id", message)))
        return _run_with_extra(handler, jobs, extra, "jobs")

    def job(self, job_id: str) -> Job:
        """The job with this id; ``KeyError`` naming the known ids otherwise."""
        for job in self.jobs:
            if job.id == job_id:
                return job
        known = ", ".join(j.id for j in self.jobs) or "none"
        raise KeyError(f"no job {job_id!r} in this config (jobs: {known})")

    @property
    def digest(self) -> str:
        """sha256 hex of the whole validated config in canonical JSON."""
        return _sha256(self.model_dump(mode="json"))

    def job_digest(self, job_id: str) -> str:
        """sha256 hex over one job with the storage and encryption it uses (see the class doc)."""
        payload = {
            "job": self.job(job_id).model_dump(mode="json"),
            "storage": self.storage.model_dump(mode="json"),
            "encryption": _dump(self.encryption),
        }
        return _sha256(payload)

    def secret_env_names(self) -> set[str]:
        """Every variable this config names as holding a secret (passwords, storage keys)."""
        names: set[str] = set()
        for job in self.jobs:
            names |= job.secret_env_names()
        if isinstance(self.storage, S3Storage):
            names |= {n for n in (self.storage.access_key_env, self.storage.secret_key_env) if n}
        return names


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _sha256(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- loading


def parse_config(data: Any, *, limits: Limits | None = None, source: str | None = None) -> Config:
    """Validate an in-memory config (the parsed YAML); ``ConfigError`` lists every violation.

    ``limits`` defaults to this host's (:func:`config.limits.load_limits`); a bad operator
    override raises :class:`config.limits.LimitError` from here, before any validation.
    """
    if not isinstance(data, Mapping):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError([f"{source or 'config'}: the top level must be a mapping, got {kind}"])
    limits = load_limits() if limits is None else limits
    try:
        return Config.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        violations = [_violation(err, data) for err in exc.errors()]
        raise ConfigError(violations, source) from None


def load_config(
    path: str | os.PathLike[str] | None = None, *, limits: Limits | None = None
) -> Config:
    """Read and validate the config file (default: ``$BACKUPY_CONFIG`` or ``config/jobs.yaml``)."""
    source = os.fspath(path) if path is not None else config_path()
    return parse_config(_read_yaml(source), limits=limits, source=source)


def config_path() -> str:
    """The config file this process uses when none is named."""
    return os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a repeated key: PyYAML would otherwise keep the last one silently,
    so a second ``pre_hooks:`` would drop the first list without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _read_yaml(source: str) -> Any:
    """The parsed file, or ``ConfigError`` with one line naming the file and the problem."""
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such file"], source) from None
    except IsADirectoryError:
        raise ConfigError([f"{source}: is a directory, not a config file"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text (byte {exc.start})"], source) from None
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror}"], source) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{source}: YAML syntax error{where}: {problem}"], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: YAML error: {exc}"], source) from None


# --------------------------------------------------------------------------- error mapping


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _detail(loc: tuple[str | int, ...], error: PydanticCustomError) -> InitErrorDetails:
    return {"type": error, "loc": loc, "input": None}


def _run_with_extra(
    handler: ValidatorFunctionWrapHandler, data: Any, extra: list[InitErrorDetails], title: str
) -> Any:
    """Run the inner validation and report ``extra`` together with whatever it found."""
    try:
        result = handler(data)
    except ValidationError as exc:
        if not extra:
            raise
        inner = [_detail(err["loc"], _rule("rendered", _message(err))) for err in exc.errors()]
        raise ValidationError.from_exception_data(title, [*inner, *extra]) from None
    if extra:
        raise ValidationError.from_exception_data(title, extra)
    return result


def _union_tags() -> dict[str, set[str]]:
    """Pydantic puts the chosen union member's tag in an error's location; these are dropped."""

    def tags(*models: type[BaseModel]) -> set[str]:
        return {get_args(m.model_fields["type"].annotation)[0] for m in models}

    return {
        "target": tags(*_TARGET_TYPES),
        "storage": tags(LocalStorage, S3Storage),
        "encryption": {"none", "age"},
    }


_UNION_TAGS = _union_tags()
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _location(loc: tuple[str | int, ...], data: Any) -> str:
    """``('jobs', 0, 'target', 'postgresql', 'port')`` → ``jobs[app-db].target.port``."""
    text = ""
    previous: str | int | None = None
    for position, segment in enumerate(loc):
        if segment == "[key]" or (
            isinstance(previous, str) and segment in _UNION_TAGS.get(previous, ())
        ):
            previous = None
            continue
        if isinstance(segment, int):
            label = _job_label(data, segment) if position == 1 and loc[0] == "jobs" else None
            text += f"[{label or segment}]"
        elif _SIMPLE_KEY.fullmatch(segment):
            text += f".{segment}" if text else segment
        else:
            text += f"[{segment!r}]"
        previous = segment
    return text


def _job_label(data: Any, index: int) -> str | None:
    """The job's id when it has a usable one, so errors read ``jobs[app-db]`` not ``jobs[3]``."""
    jobs = data.get("jobs") if isinstance(data, Mapping) else None
    if isinstance(jobs, list) and 0 <= index < len(jobs) and isinstance(jobs[index], Mapping):
        job_id = jobs[index].get("id")
        if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id):
            same = sum(1 for j in jobs if isinstance(j, Mapping) and j.get("id") == job_id)
            return job_id if same == 1 else None  # a duplicated id locates nothing
    return None


def _show(value: Any, width: int = 40) -> str:
    """A short repr for messages; only used for non-secret fields (names, choices, numbers)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


def _message(err: ErrorDetails) -> str:
    """Pydantic's error → the rule in plain words. Free-form input is never echoed."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    fixed = {
        "missing": "required",
        "extra_forbidden": "unknown field",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "dict_type": "must be a mapping",
        "list_type": "must be a list",
        "string_type": "must be a string (quote it in YAML)",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "union_tag_not_found": "needs a 'type' field",
    }
    if kind in fixed:
        return fixed[kind]
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, not {_show(value)}"
    if kind == "union_tag_invalid":
        return f"type must be one of {ctx.get('expected_tags')}, not {_show(ctx.get('tag'))}"
    if kind == "greater_than_equal":
        return f"{_show(value)} is below the minimum {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"{_show(value)}, the limit is {ctx.get('le')}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    return str(err["msg"]).removeprefix("Value error, ")


def _violation(err: ErrorDetails, data: Any) -> str:
    location = _location(tuple(err["loc"]), data)
    return f"{location}: {_message(err)}" if location else _message(err)
