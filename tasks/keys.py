"""age X25519 keys: make an identity file, read one back, parse recipients.

Workers hold only recipients (public keys), so a stolen worker cannot read old backups; the
identity (secret key) lives with whoever restores. Identity files use the ``age-keygen`` format
so that the ``age`` CLI reads them, and nothing here ever echoes their content: an error names
the file and the line number, never the text.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

from pyrage import x25519

#: An identity file is a secret: owner read/write only.
IDENTITY_FILE_MODE = 0o600
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
RECIPIENT_PREFIX = "age1"


class KeyFileError(Exception):
    """An identity file that cannot be written or read; the message never holds key material."""


class RecipientError(ValueError):
    """A recipient string that is not an age X25519 public key."""


def generate_identity(path: str | os.PathLike[str]) -> str:
    """Write a new identity to ``path`` (mode 0600) and return its recipient (``age1…``).

    The file is created with ``O_CREAT | O_EXCL``: it is born with mode 0600 (never briefly
    readable by others) and an existing file, maybe the only copy of an older key, is never
    replaced. A failed write removes the half-written file.
    """
    target = Path(path)
    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    created = datetime.now(UTC).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, IDENTITY_FILE_MODE)
    except FileExistsError:
        raise KeyFileError(f"refusing to overwrite existing key file {target}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {target}: {exc.strerror}") from None
    try:
        os.fchmod(fd, IDENTITY_FILE_MODE)  # the umask may only have narrowed it; be exact
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    os.close(fd)
    return recipient


def load_identities(path: str | os.PathLike[str]) -> list[x25519.Identity]:
    """Every X25519 identity in an identity file; comments and blank lines are skipped."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"key file not found: {source}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {source} is not an age identity file (not UTF-8)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {source}: {exc.strerror}") from None
    identities = [
        _parse_identity_line(source, number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not identities:
        raise KeyFileError(
            f"key file {source} holds no age identity "
            f"(expected a line starting with {IDENTITY_PREFIX})"
        )
    return identities


def _parse_identity_line(source: Path, number: int, line: str) -> x25519.Identity:
    try:
        return x25519.Identity.from_str(line.strip())
    except Exception:
        # pyrage's message may quote the input: it is replaced, never chained or echoed.
        raise KeyFileError(
            f"key file {source}, line {number}: not an age X25519 identity "
            f"(expected a line starting with {IDENTITY_PREFIX})"
        ) from None


def parse_recipients(recipients: list[str]) -> list[x25519.Recipient]:
    """Parse ``age1…`` strings; an empty list is an error (encryption to nobody)."""
    if not recipients:
        raise RecipientError("encryption needs at least one recipient")
    parsed = []
    for index, text in enumerate(recipients):
        try:
            parsed.append(x25519.Recipient.from_str(text.strip()))
        except Exception:
            raise RecipientError(
                f"recipient #{index + 1} ({text[:12]!r}…) is not an age X25519 recipient "
                f"(expected {RECIPIENT_PREFIX}…)"
            ) from None
    return parsed
