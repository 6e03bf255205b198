"""Signed snapshots: round trip, tamper and truncation detection, never unpickling unverified bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.config import LearnerSpec
from learners.labels import Target
from learners.online import OnlineLearner
from learners.snapshot import MAGIC, dump_snapshot, installed_versions, load_snapshot, read_snapshot_meta
from schemas.errors import ConfigError, SnapshotError, SnapshotSignatureError

KEY = b"k" * 32
OFFSETS = {"learnloop.feedback:0": 1234, "learnloop.feedback:1": 99}

DETONATED: list[str] = []


class Bomb:
    """Unpickling this records that unverified bytes were loaded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (DETONATED.append, ("boom",))


def learner() -> OnlineLearner:
    model = OnlineLearner("sea", LearnerSpec())
    for i in range(50):
        model.learn_one({"a": float(i), "b": float(i % 3)}, Target(i % 2 == 0, 1.0))
    return model


def blob_of(state: object = None, **kwargs: Any) -> bytes:
    return dump_snapshot(state if state is not None else {"w": 1}, key=KEY, n_seen=3, offsets=OFFSETS, **kwargs)


def meta_span(blob: bytes) -> tuple[int, int]:
    (length,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    return len(MAGIC) + 4, len(MAGIC) + 4 + length


def test_round_trip_keeps_state_and_metadata() -> None:
    original = learner()
    blob = dump_snapshot(original, key=KEY, n_seen=original.n_seen, offsets=OFFSETS, extra={"model_version": "7"})
    restored, meta = load_snapshot(blob, key=KEY)
    assert isinstance(restored, OnlineLearner)
    assert restored.predict_proba_one({"a": 3.0, "b": 1.0}) == original.predict_proba_one({"a": 3.0, "b": 1.0})
    assert (meta.n_seen, meta.offsets, meta.extra, meta.format) == (50, OFFSETS, {"model_version": "7"}, 1)
    assert datetime.fromisoformat(meta.created_at).utcoffset() == UTC.utcoffset(None)
    assert {"python", "river", "numpy", "pydantic"} <= set(meta.versions)
    assert blob.startswith(MAGIC)


def test_layout_is_magic_length_meta_pickle_hmac() -> None:
    blob = blob_of({"w": 1})
    start, end = meta_span(blob)
    meta = json.loads(blob[start:end])
    assert meta["n_seen"] == 3
    assert pickle.loads(blob[end:-32]) == {"w": 1}
    assert blob[-32:] == hmac.new(KEY, blob[:-32], hashlib.sha256).digest()


def test_meta_is_readable_without_the_key() -> None:
    meta = read_snapshot_meta(blob_of())
    assert meta.offsets == OFFSETS and meta.n_seen == 3


def test_versions_never_import_heavy_libraries() -> None:
    already = {name for name in ("torch", "spacy") if name in sys.modules}
    installed_versions()
    assert {name for name in ("torch", "spacy") if name in sys.modules} == already


def test_flipped_payload_byte_fails_the_signature_and_is_never_unpickled() -> None:
    blob = bytearray(blob_of(Bomb()))
    _, end = meta_span(bytes(blob))
    blob[end + 3] ^= 0x01
    with pytest.raises(SnapshotSignatureError, match="LEARNLOOP_SNAPSHOT__KEY"):
        load_snapshot(bytes(blob), key=KEY)
    assert DETONATED == []


def test_flipped_signature_byte_fails_the_signature() -> None:
    blob = bytearray(blob_of())
    blob[-1] ^= 0x80
    with pytest.raises(SnapshotSignatureError):
        load_snapshot(bytes(blob), key=KEY)


def test_edited_metadata_fails_the_signature() -> None:
    blob = blob_of()
    forged = blob.replace(b'"learnloop.feedback:0":1234', b'"learnloop.feedback:0":9999')
    assert forged != blob
    with pytest.raises(SnapshotSignatureError):
        load_snapshot(forged, key=KEY)


def test_wrong_key_fails_the_signature() -> None:
    with pytest.raises(SnapshotSignatureError, match="signed with a different"):
        load_snapshot(blob_of(Bomb()), key=b"another-key-of-32-bytes-.......!")
    assert DETONATED == []


@pytest.mark.parametrize("keep", [0, 5, 12, 40, -40, -33, -1])
def test_truncated_snapshot_is_a_snapshot_error(keep: int) -> None:
    blob = blob_of()
    with pytest.raises(SnapshotError, match="truncated") as excinfo:
        load_snapshot(blob[:keep], key=KEY)
    assert not isinstance(excinfo.value, SnapshotSignatureError)


def test_bad_magic_is_a_snapshot_error() -> None:
    with pytest.raises(SnapshotError, match="not a learnloop snapshot"):
        load_snapshot(b"PK\x03\x04" + blob_of()[4:], key=KEY)
    with pytest.raises(SnapshotError, match="not a learnloop snapshot"):
        read_snapshot_meta(b"x" * 100)


@pytest.mark.parametrize("key", [b"", b"short", b"fifteen-bytes!!"])
def test_short_keys_are_refused(key: bytes) -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        dump_snapshot({}, key=key, n_seen=0, offsets={})
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_snapshot(blob_of(), key=key)


def resign_with_river(blob: bytes, river: str) -> bytes:
    start, end = meta_span(blob)
    meta = json.loads(blob[start:end])
    meta["versions"]["river"] = river
    meta_json = json.dumps(meta).encode()
    body = MAGIC + struct.pack(">I", len(meta_json)) + meta_json + blob[end:-32]
    return body + hmac.new(KEY, body, hashlib.sha256).digest()


def test_other_river_minor_is_refused_naming_both_versions() -> None:
    installed = installed_versions()["river"]
    with pytest.raises(SnapshotError, match=rf"River 0\.25\.1, installed River is {installed}"):
        load_snapshot(resign_with_river(blob_of(Bomb()), "0.25.1"), key=KEY)
    assert DETONATED == []


def test_other_river_patch_release_loads() -> None:
    major, minor = installed_versions()["river"].split(".")[:2]
    state, _ = load_snapshot(resign_with_river(blob_of(), f"{major}.{minor}.999"), key=KEY)
    assert state == {"w": 1}


def test_unserialisable_extra_is_a_snapshot_error() -> None:
    with pytest.raises(SnapshotError, match="JSON"):
        blob_of(extra={"when": datetime.now(UTC)})


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused_without_unpickling(position: int, bit: int) -> None:
    blob = bytearray(blob_of(Bomb()))
    blob[position % len(blob)] ^= 1 << bit
    with pytest.raises(SnapshotError):
        load_snapshot(bytes(blob), key=KEY)
    assert DETONATED == []
