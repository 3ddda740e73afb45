"""JWT bearer tokens: HS256 with a secret, RS256/ES256 from a JWKS served on 127.0.0.1; every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from matrix_mcp.config import Settings
from matrix_mcp.http import jwt_auth
from matrix_mcp.http.jwt_auth import JwtVerifier
from tests.support.http_helpers import client, free_port, post_init, running, serving

pytestmark = pytest.mark.anyio

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"
AUD = "http://matrix.test/mcp"


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "aud": AUD, "iat": now, "exp": now + 300, "scope": "matrix:read"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_hs256_tokens_and_every_refusal() -> None:
    v = JwtVerifier(audience=AUD, secret=SECRET, issuer="https://idp.test")
    ok = await v.verify_token(
        jwt.encode(claims(iss="https://idp.test", scope="matrix:read matrix:plan"), SECRET)
    )
    assert ok is not None and ok.client_id == "jwt:alice" and ok.scopes == ["matrix:read", "matrix:plan"]
    scp = await v.verify_token(
        jwt.encode(claims(iss="https://idp.test", scope=None, scp=["matrix:work"]), SECRET)
    )
    assert scp is not None and scp.scopes == ["matrix:work"]
    refused = {
        "wrong aud": jwt.encode(claims(iss="https://idp.test", aud="http://other/mcp"), SECRET),
        "wrong iss": jwt.encode(claims(iss="https://evil.test"), SECRET),
        "expired": jwt.encode(claims(iss="https://idp.test", exp=int(time.time()) - 120), SECRET),
        "not yet valid": jwt.encode(claims(iss="https://idp.test", nbf=int(time.time()) + 600), SECRET),
        "no exp": jwt.encode(claims(iss="https://idp.test", exp=None), SECRET),
        "wrong signature": jwt.encode(claims(iss="https://idp.test"), "another-secret-another-secret-xx"),
        "alg none": b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims(iss="https://idp.test")) + ".",
        "garbage": "not.a.jwt",
    }
    for why, token in refused.items():
        assert await v.verify_token(token) is None, why


class Jwks:
    """An identity provider's JWKS endpoint on 127.0.0.1 whose keys the test changes."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0

    def app(self) -> Starlette:
        async def jwks(request: Request) -> JSONResponse:
            self.requests += 1
            return JSONResponse({"keys": self.keys})

        return Starlette(routes=[Route("/jwks.json", jwks)])

    def add(self, kid: str, public_key: Any, alg: str) -> None:
        algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        jwk = algo.to_jwk(public_key, as_dict=True)
        self.keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})


async def test_jwks_rs256_es256_unknown_kid_refetch_and_algorithm_confusion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jwt_auth, "JWKS_REFETCH_SECONDS", 0.0)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    later_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp = Jwks()
    idp.add("k1", rsa_key.public_key(), "RS256")
    idp.add("k2", ec_key.public_key(), "ES256")
    async with running(idp.app(), free_port()) as base:
        v = JwtVerifier(audience=AUD, jwks_url=f"{base}/jwks.json")
        rs = await v.verify_token(
            jwt.encode(claims(scope=None, scp="matrix:work"), rsa_key, "RS256", headers={"kid": "k1"})
        )
        assert rs is not None and rs.scopes == ["matrix:work"]
        es = await v.verify_token(jwt.encode(claims(), ec_key, "ES256", headers={"kid": "k2"}))
        assert es is not None and es.subject == "alice"
        fetched = idp.requests
        assert fetched == 1  # cached
        # a kid the provider does not publish: refetched (rotation), still unknown, refused
        unknown = jwt.encode(claims(), later_key, "RS256", headers={"kid": "k3"})
        assert await v.verify_token(unknown) is None and idp.requests == fetched + 1
        # the provider rotates k3 in: the next token with it makes the cache refetch and accept it
        idp.add("k3", later_key.public_key(), "RS256")
        assert await v.verify_token(unknown) is not None
        # a token signed by the right key id with the wrong key, HS256 with the public key as secret, none
        forged = jwt.encode(claims(), later_key, "RS256", headers={"kid": "k1"})
        assert await v.verify_token(forged) is None
        pem = rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        confused = b64({"alg": "HS256", "kid": "k1"}) + "." + b64(claims())
        sig = hmac.new(pem, confused.encode(), hashlib.sha256).digest()
        confused += "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
        assert await v.verify_token(confused) is None
        none = b64({"alg": "none", "kid": "k1"}) + "." + b64(claims()) + "."
        assert await v.verify_token(none) is None
        wrong_aud = jwt.encode(claims(aud="http://x/mcp"), rsa_key, "RS256", headers={"kid": "k1"})
        assert await v.verify_token(wrong_aud) is None


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_jwt_over_http_in_both_eras(tmp_path: Path, mode: str) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=True, jwt_secret=SECRET) as (base, _):
        token = jwt.encode(claims(aud=f"{base}/mcp", scope="matrix:plan matrix:read"), SECRET)
        async with client(base, token, mode) as c:
            plan = await c.call_tool("plan_run", {"name": "j", "packages": [{"name": "p", "items": ["a"]}]})
            assert not plan.is_error
            assert "claim_items" not in {t.name for t in (await c.list_tools()).tools}
        async with httpx2.AsyncClient() as http:
            default_aud = jwt.encode(claims(), SECRET)  # audience http://matrix.test/mcp, not this server
            assert (await post_init(http, base, Authorization=f"Bearer {default_aud}")).status_code == 401
            assert (await post_init(http, base, Authorization=f"Bearer {token}")).status_code == 200


async def test_one_leeway_on_mcp_rest_and_the_board(tmp_path: Path) -> None:
    """A token past `exp` but within the leeway is accepted by /mcp, the REST API and the board alike;
    one past the leeway is refused by all three (REST and the board used to allow 30 s /mcp refused)."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=True, jwt_secret=SECRET, jwt_leeway=60) as (base, _):
        now = int(time.time())
        within = jwt.encode(claims(aud=f"{base}/mcp", exp=now - 20), SECRET)
        past = jwt.encode(claims(aud=f"{base}/mcp", exp=now - 90), SECRET)
        async with httpx2.AsyncClient() as http:
            for token, expected in ((within, True), (past, False)):
                bearer = {"Authorization": f"Bearer {token}"}
                mcp = await post_init(http, base, **bearer)
                rest = await http.get(f"{base}/api/v1/runs", headers=bearer)
                board = await http.get(f"{base}/ui/", headers=bearer)
                got = (mcp.status_code == 200, rest.status_code == 200, board.status_code == 200)
                assert got == (expected, expected, expected), (expected, got)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://idp.test/jwks.json", True),
        ("http://127.0.0.1:9/jwks.json", True),
        ("http://[::1]:9/jwks.json", True),
        ("http://localhost:9/jwks.json", True),
        ("http://idp.test/jwks.json", False),
        ("http://10.0.0.5/jwks.json", False),
        ("ftp://idp.test/jwks.json", False),
        ("idp.test/jwks.json", False),
    ],
)
def test_a_plain_http_jwks_url_is_refused_at_start_up(url: str, ok: bool) -> None:
    from matrix_mcp.http.options import ServiceOptions

    if ok:
        assert ServiceOptions.from_env({"MATRIX_JWT_JWKS_URL": url}).jwt_jwks_url == url
        return
    with pytest.raises(ValueError, match=r"^MATRIX_JWT_JWKS_URL: ") as err:
        ServiceOptions.from_env({"MATRIX_JWT_JWKS_URL": url})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^MATRIX_JWT_JWKS_URL: "):
        JwtVerifier(audience=AUD, jwks_url=url)


def test_the_leeway_setting_is_one_line_when_wrong() -> None:
    from matrix_mcp.http.options import ServiceOptions

    assert ServiceOptions.from_env({"MATRIX_JWT_LEEWAY_SECONDS": "0"}).jwt_leeway == 0
    with pytest.raises(ValueError, match=r"^MATRIX_JWT_LEEWAY_SECONDS must be"):
        ServiceOptions.from_env({"MATRIX_JWT_LEEWAY_SECONDS": "-5"})
