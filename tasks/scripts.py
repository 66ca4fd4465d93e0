"""Lua scripts kept as ``.lua`` files beside the code, read once and registered once per client.

Registering once gives each script an ``EVALSHA`` fast path (redis-py reloads it by itself after a
server restart or ``SCRIPT FLUSH``), and keeping the text in files keeps it readable, diffable and
testable against real Redis and fakeredis alike.
"""

from __future__ import annotations

import threading
import weakref
from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).with_name("lua")

# Weak keys: a client that is closed and dropped takes its scripts with it, so a process that
# makes clients (tests, reloads) does not accumulate them.
_registered: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


@cache
def _source(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def script(client: redis.Redis, name: str) -> Script:
    """The registered script ``lua/{name}.lua`` for this client (registered on first use)."""
    with _registered_lock:
        scripts = _registered.setdefault(client, {})
        found = scripts.get(name)
        if found is None:
            found = scripts[name] = client.register_script(_source(name))
        return found
