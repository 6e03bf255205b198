"""Signed learner snapshots: pickled state plus the input offsets it reflects.

Layout::

    b"LLSNAP1\\n" | meta length (4 bytes, big-endian) | meta JSON | pickle (protocol 5) | HMAC-SHA256

The HMAC covers everything before it and is checked before anything is unpickled: a pickle
runs code, so bytes we did not sign ourselves are never loaded. The metadata records the
library versions because River pickles do not survive a minor-version change (0.25 broke
older ones); a snapshot from another River major.minor is refused with both versions named.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.metadata
import json
import pickle
import platform
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from schemas.errors import ConfigError, SnapshotError, SnapshotSignatureError

__all__ = ["MAGIC", "MIN_KEY_BYTES", "SnapshotMeta", "dump_snapshot", "load_snapshot", "read_snapshot_meta"]

MAGIC = b"LLSNAP1\n"
MIN_KEY_BYTES = 16
FORMAT = 1
_LENGTH = struct.Struct(">I")
_DIGEST_BYTES = hashlib.sha256().digest_size
_HEADER_BYTES = len(MAGIC) + _LENGTH.size
# Recorded when installed; spacy and torch are looked up, never imported (importing torch takes seconds).
_VERSIONED_PACKAGES = ("river", "numpy", "pydantic", "spacy", "torch")


class _TruncatedSnapshot(SnapshotError):
    """Shorter than its own header says; told apart so it is not reported as forgery."""


@dataclass(frozen=True)
class SnapshotMeta:
    """What a snapshot holds, readable without the key and without unpickling.

    ``payload_bytes`` (the pickle's size) lets a truncated blob be told apart from a forged one.

    >>> meta = SnapshotMeta(n_seen=10, offsets={"learnloop.feedback:0": 9},
    ...                     created_at="2025-01-01T00:00:00+00:00")
    >>> SnapshotMeta.from_dict(meta.to_dict()) == meta
    True
    """

    n_seen: int
    offsets: dict[str, int]
    created_at: str
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    payload_bytes: int = 0
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SnapshotMeta:
        try:
            return cls(
                n_seen=int(data["n_seen"]),
                offsets={str(k): int(v) for k, v in data["offsets"].items()},
                created_at=str(data["created_at"]),
                versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
                extra=dict(data.get("extra", {})),
                payload_bytes=int(data.get("payload_bytes", 0)),
                format=int(data["format"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SnapshotError(f"snapshot metadata is malformed: {exc!r}") from None


def installed_versions() -> dict[str, str]:
    """Python and library versions of this process, as snapshot metadata records them."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str]:
    # Looked up once: reading package metadata takes milliseconds (about 4 ms for these five),
    # more than signing a small learner, and a snapshot is written or read every second.
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def dump_snapshot(
    state: object,
    *,
    key: bytes,
    n_seen: int,
    offsets: Mapping[str, int],
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Pickle ``state`` with its metadata and sign the lot.

    >>> blob = dump_snapshot({"w": [1.0, 2.0]}, key=b"k" * 32, n_seen=2, offsets={"learnloop.feedback:0": 1})
    >>> state, meta = load_snapshot(blob, key=b"k" * 32)
    >>> state, meta.n_seen, meta.offsets
    ({'w': [1.0, 2.0]}, 2, {'learnloop.feedback:0': 1})
    """
    _check_key(key)
    payload = pickle.dumps(state, protocol=5)
    meta = SnapshotMeta(
        n_seen=n_seen,
        offsets=dict(offsets),
        created_at=datetime.now(UTC).isoformat(),
        versions=installed_versions(),
        extra=dict(extra or {}),
        payload_bytes=len(payload),
    )
    try:
        meta_json = json.dumps(meta.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot metadata is not JSON-serialisable: {exc}") from None
    body = b"".join((MAGIC, _LENGTH.pack(len(meta_json)), meta_json, payload))
    return body + hmac.digest(key, body, "sha256")


def load_snapshot(blob: bytes, *, key: bytes) -> tuple[object, SnapshotMeta]:
    """Verify, check versions, then unpickle; raises ``SnapshotError`` / ``SnapshotSignatureError``."""
    _check_key(key)
    if len(blob) < _HEADER_BYTES + _DIGEST_BYTES or not blob.startswith(MAGIC):
        _parse_header(blob)  # raises the precise "truncated" / "not a snapshot" error
    body, signature = blob[:-_DIGEST_BYTES], blob[-_DIGEST_BYTES:]
    if not hmac.compare_digest(hmac.digest(key, body, "sha256"), signature):
        _raise_unverified(blob)
    meta, meta_end = _parse_header(blob)
    if len(blob) != meta_end + meta.payload_bytes + _DIGEST_BYTES:  # signed by us, so another layout
        raise SnapshotError(f"snapshot is {len(blob)} bytes, its metadata says otherwise")
    _check_river_version(meta)
    try:
        state = pickle.loads(body[meta_end:])
    except Exception as exc:  # a signed pickle that still fails to load: report, don't guess
        raise SnapshotError(f"snapshot could not be unpickled: {exc!r}") from exc
    return state, meta


def read_snapshot_meta(blob: bytes) -> SnapshotMeta:
    """The metadata alone: no key needed, nothing unpickled (unverified, for status tools)."""
    meta, _ = _parse_header(blob)
    return meta


def _raise_unverified(blob: bytes) -> NoReturn:
    # The header is unverified here; it only picks the more helpful message.
    try:
        meta, meta_end = _parse_header(blob)
    except _TruncatedSnapshot:
        raise
    except SnapshotError:
        pass  # a garbled header on a blob that fails verification: modified
    else:
        expected = meta_end + meta.payload_bytes + _DIGEST_BYTES
        if len(blob) < expected:
            raise _TruncatedSnapshot(f"snapshot is truncated: {len(blob)} bytes, expected {expected}")
    raise SnapshotSignatureError(
        "snapshot signature does not verify: it was modified or signed with a different LEARNLOOP_SNAPSHOT__KEY"
    )


def _parse_header(blob: bytes) -> tuple[SnapshotMeta, int]:
    if len(blob) < _HEADER_BYTES + _DIGEST_BYTES:
        raise _TruncatedSnapshot(f"snapshot is truncated: {len(blob)} bytes")
    if not blob.startswith(MAGIC):
        raise SnapshotError(f"not a learnloop snapshot (magic {bytes(blob[: len(MAGIC)])!r})")
    (meta_len,) = _LENGTH.unpack_from(blob, len(MAGIC))
    meta_end = _HEADER_BYTES + meta_len
    if len(blob) < meta_end + _DIGEST_BYTES:
        raise _TruncatedSnapshot(f"snapshot is truncated: {len(blob)} bytes, its metadata needs {meta_end}")
    try:
        data = json.loads(blob[_HEADER_BYTES:meta_end])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"snapshot metadata is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SnapshotError("snapshot metadata is not a JSON object")
    meta = SnapshotMeta.from_dict(data)
    if meta.format != FORMAT:
        raise SnapshotError(f"snapshot format {meta.format} is not supported (this build reads {FORMAT})")
    return meta, meta_end


def _check_river_version(meta: SnapshotMeta) -> None:
    recorded = meta.versions.get("river")
    installed = installed_versions().get("river")
    if recorded is None or installed is None:
        raise SnapshotError(f"cannot compare River versions (snapshot: {recorded}, installed: {installed})")
    if _major_minor(recorded) != _major_minor(installed):
        raise SnapshotError(
            f"snapshot was written with River {recorded}, installed River is {installed}: "
            "River pickles do not carry across minor versions; rebuild the learner from the event log"
        )


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"snapshot key must be at least {MIN_KEY_BYTES} bytes (LEARNLOOP_SNAPSHOT__KEY)")
