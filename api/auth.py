"""Who is calling: a bearer JWT or an API key, when either is configured.

Owners live in two namespaces, so a token's subject can never pass for an API key's owner:
`jwt:<sub>` and `key:<name>`. With neither configured every caller is `anonymous` (a warning is
logged at start). API keys are held as SHA-256 digests only (`AUTH_API_KEYS` takes `key=owner`
or `sha256:<hex of the key's digest>=owner`); a presented key is hashed and compared with every
digest in constant time. A 401 says what is wrong in a fixed phrase, never the library's text.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

import jwt

from api.errors import ApiError
from core.config import Settings
from workflows.models import ANONYMOUS_OWNER

JWT_PREFIX, KEY_PREFIX = "jwt:", "key:"
MISSING_CREDENTIALS = "authentication required: send a bearer token or an API key"
# Printable ASCII, 1-128 characters, no surrounding spaces: safe in search attributes, logs
# and visibility queries.
_OWNER_NAME = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")
_HASHED_KEY = re.compile(r"sha256:([0-9a-fA-F]{64})")
_ASYMMETRIC = ("RS", "ES", "PS", "Ed")
_MISSING_CLAIM = {
    "exp": "token has no expiry",
    "sub": "token has no subject",
    "aud": "token has no audience",
    "iss": "token has no issuer",
}
# Most specific first: InvalidSignatureError is a DecodeError.
_JWT_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidIssuedAtError, "token issue time is invalid"),
    (jwt.exceptions.InvalidSubjectError, "token subject is not a valid owner"),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted"),
    (jwt.DecodeError, "credentials are neither a known API key nor a well-formed token"),
)


def is_owner_name(name: object) -> bool:
    return isinstance(name, str) and _OWNER_NAME.fullmatch(name) is not None


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_api_keys(keys: dict[str, str]) -> list[tuple[bytes, str]]:
    """(digest, owner) per configured key; a bad entry stops the start with a one-line error."""
    parsed = []
    for key, name in keys.items():
        # Settings turn an entry without `=owner` into its own owner: that would publish the key.
        if name == key or not is_owner_name(name):
            raise ValueError("AUTH_API_KEYS: every entry must be key=owner, owner 1-128 printable")
        hashed = _HASHED_KEY.fullmatch(key)
        if key.startswith("sha256:") and not hashed:
            raise ValueError("AUTH_API_KEYS: a sha256: key must be 64 hex digits")
        parsed.append((bytes.fromhex(hashed[1]) if hashed else key_digest(key), KEY_PREFIX + name))
    return parsed


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self.api_keys = parse_api_keys(settings.api_keys)
        self.secret = settings.auth_jwt_secret
        self.public_key = settings.auth_jwt_public_key
        self.audience = settings.auth_jwt_audience
        self.issuer = settings.auth_jwt_issuer
        self.max_lifetime = settings.auth_jwt_max_lifetime_seconds
        self.algorithms = [a.strip() for a in settings.auth_jwt_algorithms.split(",") if a.strip()]

    @property
    def accepts_jwt(self) -> bool:
        return bool(self.secret or self.public_key)

    def owner(self, *credentials: str | None) -> str:
        """The first credential given names the owner; none (with auth on) is 401."""
        if not self.enabled:
            return ANONYMOUS_OWNER
        token = next((c for c in credentials if c), None)
        if token is None:
            raise unauthorized(MISSING_CREDENTIALS)
        if (owner := self._api_key_owner(token)) is not None:
            return owner
        if not self.accepts_jwt:
            raise unauthorized("unknown API key")
        return self._jwt_owner(token)

    def _api_key_owner(self, token: str) -> str | None:
        presented = key_digest(token)
        found = None
        for digest, owner in self.api_keys:
            # Every key compared, in constant time: timing tells nothing about a guess.
            if hmac.compare_digest(digest, presented):
                found = owner
        return found

    def _jwt_owner(self, token: str) -> str:
        try:
            claims = self._decode(token)
        except jwt.PyJWTError as exc:
            raise unauthorized(_jwt_message(exc)) from None
        now = time.time()
        issued = claims.get("iat")
        if int(claims["exp"]) - (int(issued) if issued is not None else now) > self.max_lifetime:
            raise unauthorized("token lifetime exceeds the maximum")
        subject = claims["sub"]
        if not is_owner_name(subject):
            raise unauthorized("token subject is not a valid owner")
        return JWT_PREFIX + str(subject)

    def _decode(self, token: str) -> dict[str, Any]:
        algorithm = jwt.get_unverified_header(token).get("alg", "")
        if algorithm not in self.algorithms:
            raise jwt.InvalidAlgorithmError
        key = self.public_key if str(algorithm).startswith(_ASYMMETRIC) else self.secret
        if not key:
            raise jwt.InvalidAlgorithmError
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
        )
        return claims


def _jwt_message(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return _MISSING_CLAIM.get(exc.claim, "token lacks a required claim")
    return next((text for kind, text in _JWT_ERRORS if isinstance(exc, kind)), "token is invalid")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
