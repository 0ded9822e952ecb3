"""Stream tickets: short-lived, single-job credentials for browsers' event streams.

`EventSource` and the browser WebSocket cannot send headers, and a bearer token in a URL ends up
in proxy logs and browser history. Instead the page asks `POST /v1/download/{jobId}/ticket`
(with its usual credentials) and passes the answer as `?ticket=`. A ticket is an HS256 JWT
`{aud: "download-stream", sub: <owner>, job: <jobId>, iat, exp}` signed with a key derived from
STREAM_TICKET_SECRET (or, when unset, a random secret of this process: every replica then needs
the setting). It is checked when a stream opens: only on its job's streams, only until `exp`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime

import jwt

from api.auth import unauthorized
from api.schemas import StreamTicket
from core.config import Settings

TICKET_AUDIENCE = "download-stream"


class StreamTickets:
    def __init__(self, settings: Settings) -> None:
        configured = settings.stream_ticket_secret
        self.per_process = configured is None
        secret = configured.encode() if configured else secrets.token_bytes(32)
        # A key of its own: a ticket never verifies as a bearer JWT, even with equal secrets.
        self._key = hmac.new(secret, b"stream-ticket", hashlib.sha256).digest()
        self.ttl = settings.stream_ticket_ttl_seconds

    def issue(self, owner: str, job_id: str, now: float | None = None) -> StreamTicket:
        issued = int(time.time() if now is None else now)
        expires = issued + self.ttl
        claims = {"aud": TICKET_AUDIENCE, "sub": owner, "job": job_id, "iat": issued}
        ticket = jwt.encode({**claims, "exp": expires}, self._key, algorithm="HS256")
        return StreamTicket(ticket=ticket, expires_at=datetime.fromtimestamp(expires, UTC))

    def owner(self, ticket: str, job_id: str) -> str:
        """The owner a valid ticket for this job names; anything else is 401."""
        try:
            claims = jwt.decode(
                ticket,
                self._key,
                algorithms=["HS256"],
                audience=TICKET_AUDIENCE,
                options={"require": ["exp", "sub", "job"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("ticket expired") from None
        except jwt.PyJWTError:
            raise unauthorized("ticket is invalid") from None
        if claims["job"] != job_id:
            raise unauthorized("ticket is for another job")
        return str(claims["sub"])
