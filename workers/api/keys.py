"""API keys: made once, shown once, stored as SHA-256 hashes.

This module imports nothing but the standard library, so an operator can make
a key on any machine with the package checked out::

    python -m workers.api.keys new shop-web --scopes read,write,predict

prints the key (give it to the client; it is not stored anywhere) and the
settings entry to add to ``api.keys`` (``LEARNLOOP_API__KEYS`` holds the whole
list as JSON).

A plain SHA-256 is enough here because keys are 256-bit random tokens, not
passwords: there is nothing to brute-force. A stolen settings file lets nobody
call the API.

>>> key = new_key()
>>> key.startswith("ll_") and len(key) == 46
True
>>> hash_key("ll_example")
'04523c5ab9dfa60b31e5d4018679755eb15b2e874835c26ea122a6822c2a4da4'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import sys
from collections.abc import Sequence

from schemas.envelope import NAME_PATTERN

KEY_PREFIX = "ll_"
"""Marks learnloop keys, so secret scanners and people recognise one that leaked."""
SCOPES = ("read", "write", "predict", "jobs:read", "jobs:write")
KEY_NAME_PATTERN = NAME_PATTERN  # a key's name is the default source of its events
"""A key's name doubles as the default ``source`` of the events it sends."""


def hash_key(plaintext: str) -> str:
    """The hex SHA-256 of a key, as stored in ``api.keys[].sha256``."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key: ``ll_`` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def settings_entry(name: str, plaintext: str, scopes: Sequence[str]) -> dict[str, object]:
    """The ``api.keys`` entry for a key: its name, hash and scopes (never the key itself)."""
    return {"name": name, "sha256": hash_key(plaintext), "scopes": list(scopes)}


def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise argparse.ArgumentTypeError(f"scopes are a comma-separated subset of {','.join(SCOPES)}")
    return [s for s in SCOPES if s in scopes]


def _name(text: str) -> str:
    if not re.match(KEY_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError("a key name is 1-128 of A-Z a-z 0-9 _ . : - (starting alphanumeric)")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.api.keys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a key; print it once, with the settings entry to add")
    new.add_argument("name", type=_name, help="who uses the key; the default source of their events")
    new.add_argument("--scopes", type=_scopes, default=["read"],
                     help="any of read,write,predict,jobs:read,jobs:write (default: read)")
    hashed = commands.add_parser("hash", help="print the settings entry of an existing key read from stdin")
    hashed.add_argument("name", type=_name)
    hashed.add_argument("--scopes", type=_scopes, default=["read"])
    args = parser.parse_args(argv)

    if args.command == "new":
        plaintext = new_key()
        print(f"key (shown once, store it in the client's secrets): {plaintext}")
    else:
        plaintext = sys.stdin.readline().strip()
        if not plaintext:
            parser.error("no key on stdin")
    entry = json.dumps(settings_entry(args.name, plaintext, args.scopes))
    print(f"add to the settings list api.keys: {entry}")
    print(f"e.g. LEARNLOOP_API__KEYS='[{entry}]' (the variable holds the whole list)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
