# One image for every role: worker, beat, exporter, CLI (docker-compose.yml). The dump tools come
# from Debian bookworm: postgresql-client 15 (pg_dump refuses a newer server, so the compose
# example runs PostgreSQL 15), mariadb-client, redis-tools, sqlite3, plus age and zstd for
# reading artifacts by hand.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      postgresql-client mariadb-client redis-tools sqlite3 age zstd \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY tasks ./tasks
COPY workers ./workers
COPY bench ./bench
RUN pip install --no-cache-dir .

# Workers run hooks as this user, never as root. The directories below are where the compose
# file mounts its volumes: created here, owned by the user, so a fresh named volume is too.
#   /var/backups/backupy  artifacts (local storage)
#   /var/lib/backupy      beat's schedule file; a worker's own data (the host-b example)
RUN useradd --create-home --uid 10001 backupy \
 && mkdir -p /var/backups/backupy /var/lib/backupy /etc/backupy \
 && chown backupy:backupy /var/backups/backupy /var/lib/backupy
USER backupy
ENV BACKUPY_CONFIG=/etc/backupy/jobs.yaml

CMD ["celery", "-A", "workers", "worker", "--pool", "prefork", "-Q", "backups", "-l", "INFO"]
