# One image for every role: worker, beat, exporter, CLI. The dump tools come from Debian.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      postgresql-client mariadb-client redis-tools sqlite3 age zstd \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY tasks ./tasks
COPY workers ./workers
COPY bench ./bench
RUN pip install --no-cache-dir .

# Workers run hooks as this user, never as root.
RUN useradd --create-home --uid 10001 backupy && mkdir -p /var/backups/backupy \
 && chown backupy /var/backups/backupy
USER backupy
ENV BACKUPY_CONFIG=/etc/backupy/jobs.yaml

CMD ["celery", "-A", "workers", "worker", "--pool", "prefork", "-Q", "backups", "-l", "INFO"]
