"""Who is calling: a bearer JWT (`sub` = owner) or an API key, when either is configured.

With neither configured every caller is `anonymous` (a warning is logged at start).
"""

from __future__ import annotations

import hmac

import jwt

from api.errors import ApiError
from core.config import Settings

ANONYMOUS = "anonymous"
_ASYMMETRIC = ("RS", "ES", "PS", "Ed")


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self.api_keys = settings.api_keys
        self.secret = settings.auth_jwt_secret
        self.public_key = settings.auth_jwt_public_key
        self.audience = settings.auth_jwt_audience
        self.algorithms = [a.strip() for a in settings.auth_jwt_algorithms.split(",") if a.strip()]

    def owner(self, *credentials: str | None) -> str:
        """The first credential given names the owner; none (with auth on) is 401."""
        if not self.enabled:
            return ANONYMOUS
        token = next((c for c in credentials if c), None)
        if token is None:
            raise _unauthorized("authentication required: send a bearer token or an API key")
        if (owner := self._api_key_owner(token)) is not None:
            return owner
        return self._jwt_owner(token)

    def _api_key_owner(self, token: str) -> str | None:
        found = None
        for key, owner in self.api_keys.items():
            # Constant time, and every key compared, so timing does not tell how close a guess is.
            if hmac.compare_digest(key.encode(), token.encode()):
                found = owner
        return found

    def _jwt_owner(self, token: str) -> str:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg", "")
            if algorithm not in self.algorithms:
                raise jwt.InvalidAlgorithmError(f"algorithm {algorithm!r} not accepted")
            key = self.public_key if algorithm.startswith(_ASYMMETRIC) else self.secret
            if not key:
                raise jwt.InvalidKeyError(f"no key configured for {algorithm}")
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                options={"require": ["sub"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        return str(claims["sub"])


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
