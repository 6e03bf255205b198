"""Gateway auth: keys stored hashed, checked in constant time; 401 without a known key, 403 without the scope."""

from __future__ import annotations

import hmac
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.api.app import create_app
from workers.api.auth import KeyRing
from workers.api.config import ApiConfig, ApiKey
from workers.api.keys import hash_key, main, new_key
from workers.api.memory import MemoryModels, MemoryPublisher, MemoryStore
from workers.settings import load_settings

WRITER, READER = "ll_writer-key-for-tests", "ll_reader-key-for-tests"
KEYS = [
    ApiKey(name="shop-web", sha256=hash_key(WRITER), scopes=("read", "write")),
    ApiKey(name="dashboard", sha256=hash_key(READER), scopes=("read",)),
]
FEEDBACK = {"learner": "ctr", "features": {"price": 9.5}, "label": True}
READ_ROUTES = ["/v1/learners", "/v1/models", "/v1/lag", "/v1/rollouts"]
WRITE_ROUTES = ["/v1/feedback", "/v1/predictions", "/v1/conversations"]


def make_client(tmp_path: Path, **config: object) -> TestClient:
    api = ApiConfig(keys=KEYS, **config)  # type: ignore[arg-type]
    app = create_app(load_settings(data_dir=tmp_path), api=api, producer=MemoryPublisher(), store=MemoryStore(),
                     models=MemoryModels([]))
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


@pytest.mark.parametrize("path", READ_ROUTES)
def test_read_routes_need_a_key(client: TestClient, path: str) -> None:
    res = client.get(path)
    assert res.status_code == 401
    assert res.headers["www-authenticate"] == "Bearer"
    assert "API key" in res.json()["detail"]


@pytest.mark.parametrize("path", WRITE_ROUTES)
def test_write_routes_need_a_key_and_the_write_scope(client: TestClient, path: str) -> None:
    assert client.post(path, json=FEEDBACK).status_code == 401
    assert client.post(path, json=FEEDBACK, headers={"X-API-Key": "ll_not-a-key"}).status_code == 401
    forbidden = client.post(path, json=FEEDBACK, headers={"X-API-Key": READER})
    assert forbidden.status_code == 403
    assert forbidden.json() == {"detail": "this key lacks the 'write' scope"}


def test_bearer_and_x_api_key_are_both_accepted(client: TestClient) -> None:
    assert client.get("/v1/learners", headers={"Authorization": f"Bearer {READER}"}).status_code == 200
    assert client.get("/v1/learners", headers={"X-API-Key": READER}).status_code == 200
    assert client.get("/v1/learners", headers={"Authorization": f"bearer {WRITER}"}).status_code == 200
    # Another scheme carries no key here.
    assert client.get("/v1/learners", headers={"Authorization": f"Basic {READER}"}).status_code == 401


def test_unknown_key_is_401_not_403(client: TestClient) -> None:
    res = client.get("/v1/learners", headers={"Authorization": "Bearer " + READER + "x"})
    assert (res.status_code, res.json()["detail"]) == (401, "unknown API key")


def test_anonymous_read_when_allowed_but_never_anonymous_write(tmp_path: Path) -> None:
    with make_client(tmp_path, allow_anonymous_read=True) as c:
        assert c.get("/v1/learners").status_code == 200
        assert c.post("/v1/feedback", json=FEEDBACK).status_code == 401
        # A wrong key is still an error: the caller meant to authenticate.
        assert c.get("/v1/learners", headers={"X-API-Key": "ll_wrong"}).status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/status"])
def test_probes_docs_and_the_page_itself_need_no_key(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_every_stored_hash_is_compared_whatever_matched(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    ring = KeyRing([*KEYS, ApiKey(name="third", sha256=hash_key("ll_third"))])
    for presented, name in [(WRITER, "shop-web"), ("ll_third", "third"), ("ll_nobody", None)]:
        compared.clear()
        found = ring.identify(presented)
        assert (found.name if found else None) == name
        # The first key matching does not end the loop; every comparison is of fixed-size digests.
        assert len(compared) == 3
        assert {len(a) for a, _ in compared} == {len(b) for _, b in compared} == {32}


def test_keys_are_stored_as_hashes_only() -> None:
    key = new_key()
    assert key.startswith("ll_") and len(key) > 40 and new_key() != key
    entry = ApiKey(name="k", sha256=hash_key(key).upper())
    assert entry.sha256 == hash_key(key)  # normalised to lower case
    assert key not in entry.model_dump_json()


def test_keys_cli_prints_the_key_once_and_the_settings_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "shop-web", "--scopes", "write,read"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(" ", 1)[1]
    entry = json.loads(out[1].split(": ", 1)[1])
    assert entry == {"name": "shop-web", "sha256": hash_key(key), "scopes": ["read", "write"]}
    assert ApiKey.model_validate(entry).scopes == ("read", "write")
    assert key not in "\n".join(out[1:])


def test_keys_cli_hashes_an_existing_key_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(WRITER + "\n"))
    assert main(["hash", "shop-web", "--scopes", "read,write"]) == 0
    entry = json.loads(capsys.readouterr().out.splitlines()[0].split(": ", 1)[1])
    assert ApiKey.model_validate(entry) == KEYS[0]


def test_keys_cli_refuses_unknown_scopes_and_bad_names(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["new", "x", "--scopes", "admin"], ["new", "bad name"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_api_config_rejects_duplicates_and_bad_hashes() -> None:
    with pytest.raises(ValidationError, match="unique"):
        ApiConfig(keys=[KEYS[0], ApiKey(name="shop-web", sha256=hash_key("other"))])
    with pytest.raises(ValidationError):
        ApiKey(name="k", sha256="not-hex")
    with pytest.raises(ValidationError):
        ApiKey.model_validate({"name": "k", "sha256": hash_key("x"), "scopes": []})


def test_keys_load_from_one_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``LEARNLOOP_API__KEYS`` does once ``api`` is a section of the settings."""

    class WithApi(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="LEARNLOOP_", env_nested_delimiter="__")
        api: ApiConfig = ApiConfig()

    entry = {"name": "shop-web", "sha256": hash_key(WRITER), "scopes": ["read", "write"]}
    monkeypatch.setenv("LEARNLOOP_API__KEYS", json.dumps([entry]))
    monkeypatch.setenv("LEARNLOOP_API__PORT", "9090")
    s = WithApi()
    assert (s.api.port, s.api.keys[0].name, KeyRing(s.api.keys).identify(WRITER)) == (9090, "shop-web", s.api.keys[0])
