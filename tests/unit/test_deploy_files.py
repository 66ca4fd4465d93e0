"""docker-compose.yml and Dockerfile say only what the project can do (no Docker engine needed).

Every command is a real entry point with options its command accepts, every file and volume it
names exists, the config it mounts validates and has a worker for each of its queues, every
service has a health check, and Redis persists with an append-only file.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from config.jobs import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROJECT_IMAGE_USER = "backupy"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def project_services() -> dict[str, dict[str, Any]]:
    """Services running this project's image (built from the Dockerfile)."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def argv(command: Any) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def option_names(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def check_options(command: click.Command, args: list[str], where: str) -> None:
    """Every ``-x``/``--xx`` in ``args`` is an option of ``command``; then click parses them."""
    known = option_names(command)
    for token in args:
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            assert name in known, f"{where}: {command.name} has no option {name}"
    with click.Context(command, resilient_parsing=True) as ctx:
        command.parse_args(ctx, list(args))


def celery_command(args: list[str], where: str) -> tuple[str, list[str]]:
    """``celery -A workers SUB ...`` → (SUB, its args), checked against Celery's own CLI."""
    from celery.bin.beat import beat
    from celery.bin.control import inspect
    from celery.bin.worker import worker

    assert args[:3] in (["celery", "-A", "workers"], ["celery", "--app", "workers"]), (
        f"{where}: a celery command must start `celery -A workers`: {args}"
    )
    sub, rest = args[3], args[4:]
    commands = {"worker": worker, "beat": beat, "inspect": inspect}
    assert sub in commands, f"{where}: celery {sub} is not a command this deployment uses"
    check_options(commands[sub], rest, where)
    return sub, rest


def value_of(args: list[str], *names: str) -> str | None:
    for i, token in enumerate(args):
        for name in names:
            if token == name and i + 1 < len(args):
                return args[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def mounted_config(svc: dict[str, Any]) -> Path:
    """The repo file a service mounts at its BACKUPY_CONFIG path."""
    target = svc["environment"]["BACKUPY_CONFIG"]
    for volume in svc.get("volumes", []):
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            assert source.startswith("./"), f"the config must come from the repo: {volume}"
            assert rest.endswith(":ro"), f"the config must be mounted read-only: {volume}"
            return ROOT / source
    raise AssertionError(f"nothing is mounted at BACKUPY_CONFIG={target}")


def the_config() -> Config:
    paths = {mounted_config(svc) for svc in project_services().values()}
    assert len(paths) == 1, f"every container must mount the same config: {paths}"
    return load_config(paths.pop())


# --------------------------------------------------------------------------- compose


def test_every_service_has_a_health_check() -> None:
    for name, svc in services().items():
        check = svc.get("healthcheck") or {}
        assert check.get("test"), f"service {name} has no health check"
        assert not check.get("disable"), f"service {name} disables its health check"


def test_redis_persists_with_an_append_only_file_on_a_volume() -> None:
    redis = services()["redis"]
    args = argv(redis["command"])
    assert args[0] == "redis-server"
    assert value_of(args, "--appendonly") == "yes", args
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"]), redis["volumes"]


def test_the_roles_are_all_there() -> None:
    roles: dict[str, list[str]] = {}
    for name, svc in project_services().items():
        args = argv(svc["command"])
        role = args[3] if args[0] == "celery" else args[1]
        roles.setdefault(role, []).append(name)
    assert len(roles.get("worker", [])) == 2, roles
    assert len(roles.get("beat", [])) == 1, roles
    assert roles.get("exporter"), roles
    assert "postgres" in services() and "redis" in services()


def test_celery_commands_are_valid_and_workers_use_prefork() -> None:
    for name, svc in project_services().items():
        args = argv(svc["command"])
        if args[0] != "celery":
            continue
        sub, rest = celery_command(args, name)
        if sub == "worker":
            assert value_of(rest, "--pool", "-P") == "prefork", f"{name}: time limits need prefork"
            assert value_of(rest, "-Q", "--queues"), f"{name}: a worker names its queues"


def test_backupy_commands_exist_in_the_cli() -> None:
    from workers.cli import main

    for name, svc in project_services().items():
        args = argv(svc["command"])
        if args[0] != "backupy":
            continue
        sub = args[1]
        if sub not in main.commands:
            pytest.fail(
                f"service {name} runs `backupy {sub}`, but workers.cli.main has no {sub!r} "
                f"command (it has: {', '.join(sorted(main.commands))}); the exporter must be "
                "registered on the CLI before this compose file can start"
            )
        check_options(main.commands[sub], args[2:], name)


def test_worker_and_beat_health_checks_ping_their_own_node() -> None:
    for name, svc in project_services().items():
        args = argv(svc["command"])
        if args[0] != "celery":
            continue
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL")
        # Compose turns `$$` into `$`; the shell then expands $HOSTNAME (the container's).
        probe = shlex.split(test[1].replace("$$", "$")) if test[0] == "CMD-SHELL" else test[1:]
        sub, rest = celery_command(probe, f"{name} healthcheck")
        assert sub == "inspect" and "ping" in rest, probe
        node = value_of(args, "-n", "--hostname")
        assert node and node.endswith("@%h"), f"{name}: give the node a name to ping"
        expected = node.replace("%h", "$HOSTNAME")
        assert value_of(rest, "-d", "--destination") == expected, (name, probe)
        if args[3] == "beat":
            assert "--enable-remote-control" in args, "beat answers pings only with it"


def test_the_exporter_is_checked_over_http_on_its_port() -> None:
    exporter = next(
        svc
        for svc in project_services().values()
        if argv(svc["command"])[:2] == ["backupy", "exporter"]
    )
    port = value_of(argv(exporter["command"]), "--port")
    assert port
    probe = " ".join(exporter["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/" in probe
    assert any(str(p).endswith(f":{port}") for p in exporter.get("ports", []))


def test_mounted_files_and_named_volumes_exist() -> None:
    declared = set((compose().get("volumes") or {}).keys())
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(("./", "/", "../")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, not in the repo"
            else:
                assert source in declared, f"{name} uses volume {source}, not declared"


def test_the_mounted_config_validates_and_every_queue_has_a_worker() -> None:
    config = the_config()
    served: set[str] = set()
    for svc in project_services().values():
        args = argv(svc["command"])
        if args[0] == "celery" and args[3] == "worker":
            served.update(value_of(args, "-Q", "--queues").split(","))
    for job in config.jobs:
        assert job.queue in served, f"no worker serves queue {job.queue} of job {job.id}"
    control = {
        svc["environment"].get("BACKUPY_CONTROL_QUEUE") for svc in project_services().values()
    }
    assert control <= served, f"the control queue needs a worker: {control}"
    assert config.encryption != "none", "the example encrypts its backups"


def test_database_jobs_reach_their_service_and_their_worker_has_the_password() -> None:
    config = the_config()
    for job in config.jobs:
        if job.target.type != "postgresql":
            continue
        assert job.target.host in services(), f"{job.id}: no service named {job.target.host}"
        workers = [
            svc
            for svc in project_services().values()
            if argv(svc["command"])[3:4] == ["worker"]
            and job.queue in value_of(argv(svc["command"]), "-Q").split(",")
        ]
        for svc in workers:
            assert job.target.password_env in svc["environment"], job.id
            assert svc["environment"][job.target.password_env].startswith("${"), (
                "the password comes from the operator's environment, never from this file"
            )
    assert any(job.target.type == "postgresql" for job in config.jobs)


def test_services_depend_on_healthy_services_only() -> None:
    for name, svc in services().items():
        for dependency, condition in (svc.get("depends_on") or {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            assert condition.get("condition") == "service_healthy", (name, dependency)


# --------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_copies_what_exists_and_runs_as_a_user() -> None:
    steps = dockerfile()
    assert steps[0][0] == "FROM"
    for keyword, rest in steps:
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1] == PROJECT_IMAGE_USER
    for package in ("config", "tasks", "workers"):
        assert any(k == "COPY" and rest.startswith(package + " ") for k, rest in steps), package


def test_dockerfile_cmd_is_a_prefork_worker() -> None:
    (cmd,) = [json.loads(rest) for keyword, rest in dockerfile() if keyword == "CMD"]
    sub, rest = celery_command(cmd, "Dockerfile CMD")
    assert sub == "worker" and value_of(rest, "--pool", "-P") == "prefork"


def test_volume_mount_points_exist_in_the_image_owned_by_its_user() -> None:
    runs = " ".join(rest for keyword, rest in dockerfile() if keyword == "RUN")
    created = set()
    for command in runs.split("&&"):
        words = command.split()
        if words[:2] == ["mkdir", "-p"]:
            created.update(words[2:])
        if words[:1] == ["chown"]:
            assert words[1].split(":")[0] == PROJECT_IMAGE_USER
    for name, svc in project_services().items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith("./"):  # a named volume: the user must be able to write it
                assert target in created, f"{name}: {target} is not created in the image"
                assert f" {target}" in runs.split("chown", 1)[1], f"{target} is not chowned"
