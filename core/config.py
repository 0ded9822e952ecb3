"""Service configuration: one settings class read from the environment (and an optional `.env`).

Variable names of the existing service are kept (PORT, S3_*, RATE_LIMIT_*, DOWNLOAD_DELAY_*, ...).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import sys
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Self

from pydantic import AwareDatetime, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from temporalio.envconfig import ClientConnectConfig

from core import bounds, temporalenv

Port = Annotated[int, Field(ge=1, le=65535)]


class Environment(StrEnum):
    development = "development"
    production = "production"


class Compression(StrEnum):
    stored = "stored"
    deflate = "deflate"


class Process(StrEnum):
    """Which process reads the settings: production checks what that process uses."""

    api = "api"
    worker = "worker"
    # A one-shot tool (`download-stack seed`): only its storage credential matters.
    tool = "tool"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- service ---
    environment: Environment = Environment.development
    service_name: str = "download-service"
    log_level: str = Field("INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    host: str = "127.0.0.1"
    port: Port = 3000
    request_timeout_ms: int = Field(30_000, ge=100)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    cors_origins: str = "*"
    trusted_proxies: str = "127.0.0.1,::1"
    rate_limit_window_ms: int = Field(60_000, ge=1)
    rate_limit_max_requests: int = Field(100, ge=1)
    rate_limit_enabled: bool = True
    # Where the counters live: this process (memory://) or a store every replica shares.
    rate_limit_storage_uri: str = Field(
        "memory://", pattern=r"^(memory://|(redis|rediss|memcached)://\S+)$"
    )

    # --- per-owner quotas (counted in RATE_LIMIT_STORAGE_URI, like the rate limit) ---
    # Jobs queued or processing at once, per owner; starts beyond get 429.
    quota_active_jobs_per_owner: int = Field(100, ge=1)
    # Files started (retries included) per owner per UTC day; starts beyond get 429.
    quota_files_per_owner_per_day: int = Field(100_000, ge=1)
    # How long Temporal's visibility may take to count a start: starts this recent are counted
    # by the API itself.
    quota_visibility_lag_seconds: int = Field(10, ge=1, le=3600)

    # --- auth (off unless a secret, public key or API keys are set) ---
    auth_jwt_secret: str | None = None
    auth_jwt_public_key: str | None = None
    auth_jwt_algorithms: str = "HS256,RS256,ES256"
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None
    # Tokens must carry `exp`, at most this far after `iat` (or after now, without `iat`).
    auth_jwt_max_lifetime_seconds: int = Field(86_400, ge=60)
    auth_api_keys: str | None = Field(
        None, description="comma-separated key=owner or sha256:<hex of the key>=owner pairs"
    )
    # Signs the short-lived single-job tickets browsers' event streams carry in their URL;
    # every API replica needs the same one (a random one per process when unset, outside
    # production).
    stream_ticket_secret: str | None = None
    stream_ticket_ttl_seconds: int = Field(60, ge=5, le=3600)

    # --- storage (S3 / MinIO) ---
    s3_endpoint: str = "http://localhost:9000"
    s3_public_endpoint: str | None = None
    # A read-only credential that presigned download links are signed with, so links never
    # name the read-write user (the main S3 credential when unset).
    s3_presign_access_key_id: str | None = None
    s3_presign_secret_access_key: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str = "minioadmin"
    s3_secret_access_key: str = "minioadmin"  # noqa: S105 - the local default
    s3_bucket_name: str = "downloads"
    s3_force_path_style: bool = True
    s3_source_key_template: str = Field("downloads/{file_id}.zip", pattern=r"\{file_id\}")
    s3_archive_key_template: str = Field("archives/{job_id}.zip", pattern=r"\{job_id\}")
    s3_part_size_mb: int = Field(8, ge=5, le=512)
    # Read-ahead of one packaging job: GETs in flight, and bytes read but not yet written.
    prefetch_requests: int = Field(16, ge=1, le=256)
    prefetch_buffer_mb: int = Field(64, ge=8, le=4096)
    presign_expiry_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)
    archive_ttl_hours: float = Field(24.0, gt=0)
    archive_compression: Compression = Compression.stored
    # The largest `max_archive_bytes` a job may ask for (its archive then comes in parts).
    max_archive_bytes_limit: bounds.ArchiveBytes = 50 << 30

    # --- temporal ---
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "downloads"
    temporal_ui_url: str = "http://localhost:8233"
    # Temporal's own client variables (the `temporal` CLI's), read through the SDK's environment
    # configuration (core/temporalenv.py); settings so that `.env` can carry them too. Precedence:
    # the environment, then `.env`, then the TOML profile, then localhost:7233 / default.
    temporal_profile: str | None = None
    temporal_config_file: str | None = None
    temporal_api_key: str | None = None
    temporal_tls: bool | None = None
    temporal_tls_client_cert_path: str | None = None
    temporal_tls_client_cert_data: str | None = None
    temporal_tls_client_key_path: str | None = None
    temporal_tls_client_key_data: str | None = None
    temporal_tls_server_ca_cert_path: str | None = None
    temporal_tls_server_ca_cert_data: str | None = None
    temporal_tls_server_name: str | None = None
    temporal_tls_disable_host_verification: bool = False
    # Production refuses a plaintext connection to Temporal unless this says the network is private.
    temporal_trusted_network: bool = False
    # Payload encryption (core/payloadcodec.py): comma-separated id:base64-key pairs (32-byte
    # AES-256 keys); the first encodes, all decode. Off when unset.
    payload_encryption_keys: str | None = None
    # The codec endpoint for the Temporal Web UI, served by the API process (0 = off), and the
    # origins allowed to call it (the Web UI's, TEMPORAL_UI_URL, when unset).
    codec_host: str = "127.0.0.1"
    codec_port: int = Field(0, ge=0, le=65535)
    codec_cors_origins: str | None = None
    # Owners' shares of the workers: comma-separated owner=weight pairs (others weigh 1); owners
    # as jobs name them: `key:<name>` for API keys, `jwt:<sub>` for tokens.
    owner_weights: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    # The most urgent priority (1 most urgent ... 5) a job may ask for, and owners' own
    # ceilings as owner=priority pairs: a job asking for more is refused (403); one asking for
    # none runs at 3, or at its owner's ceiling when that is less urgent.
    priority_ceiling: int = Field(3, ge=1, le=5)
    owner_priority_ceilings: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)

    # --- worker ---
    worker_max_concurrent_activities: int = Field(20, ge=1)
    worker_max_concurrent_workflow_tasks: int = Field(100, ge=1)
    worker_metrics_port: int = Field(9464, ge=0, le=65535)
    worker_graceful_shutdown_seconds: float = Field(10.0, ge=0)
    # Bounded as a job's options are (core.bounds): workers refuse others.
    heartbeat_timeout_seconds: bounds.HeartbeatTimeoutSeconds = bounds.HEARTBEAT_TIMEOUT_SECONDS
    heartbeat_interval_seconds: float = Field(0.5, gt=0, le=5)
    activity_max_attempts: bounds.MaxAttempts = bounds.MAX_ATTEMPTS
    retry_initial_interval_seconds: bounds.InitialIntervalSeconds = bounds.INITIAL_INTERVAL_SECONDS
    retry_backoff_coefficient: bounds.BackoffCoefficient = bounds.BACKOFF_COEFFICIENT
    retry_maximum_interval_seconds: bounds.MaxIntervalSeconds = bounds.MAX_INTERVAL_SECONDS
    # A job's packaging, every attempt and wait included; lost workers and deploy hand-overs
    # are retried until then, however often they happen.
    job_deadline_minutes: int = Field(
        bounds.DEADLINE_MINUTES, ge=bounds.MIN_DEADLINE_MINUTES, le=bounds.MAX_DEADLINE_MINUTES
    )

    # --- simulated slow origin (existing service's names) ---
    download_delay_enabled: bool = False
    download_delay_min_ms: int = Field(10_000, ge=0)
    download_delay_max_ms: int = Field(120_000, ge=0)

    # --- callbacks ---
    callback_secret: str = "change-me"  # noqa: S105 - documented placeholder
    callback_allow_private: bool = False
    # One total deadline per delivery attempt (connect, send, read).
    callback_timeout_seconds: float = Field(10.0, gt=0)
    # Callbacks run on their own task queue (`<TEMPORAL_TASK_QUEUE>-callbacks`), this many at
    # once per worker, so slow targets never take packaging slots.
    callback_max_concurrent: int = Field(8, ge=1)
    # Below the slots above, so one owner's slow targets leave room for the others.
    callback_max_pending_per_owner: int = Field(4, ge=1)
    callback_max_response_bytes: int = Field(4096, ge=0, le=1_048_576)

    # --- sealed requests ---
    # Signs every job request the API starts (HMAC-SHA256); the worker acts only on requests it
    # can verify, so a workflow started on Temporal by anyone else fails at once. API and worker
    # need the same one; outside production, unset, it is derived from the S3 credential, which
    # the processes of one local stack share.
    request_seal_secret: str | None = None
    # Runs started before this instant (Temporal's clock), from before requests were sealed, are
    # still served under the archive key they wrote (`archives/{job_id}.zip`); unset, none are.
    request_seal_legacy_before: AwareDatetime | None = None

    # --- telemetry ---
    otel_exporter_otlp_endpoint: str | None = None
    # Error tracking (Sentry): off unless a DSN is set.
    sentry_dsn: str | None = None

    # --- event streams (SSE, WebSocket), per API process ---
    # Temporal calls a second the job watchers may make together.
    stream_polls_per_second: float = Field(300.0, gt=0)
    streams_per_owner: int = Field(100, ge=1)
    streams_per_client: int = Field(50, ge=1)

    # --- progress bus (NATS): live progress from the workers to the API; off when empty ---
    # nats://host:4222 (several servers of one cluster: comma-separated).
    nats_url: str = ""
    nats_user: str | None = None
    nats_password: str | None = None
    # Each job's progress goes to `<prefix>.<digest of the job id>`.
    nats_subject_prefix: str = Field(
        "downloads.progress", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
    )
    # How often a moving job's progress is published, at most.
    progress_publish_seconds: float = Field(0.15, ge=0.05, le=2)
    # With the bus: how often a packaging attempt heartbeats Temporal besides once per stored
    # part (lost-worker detection); at most a quarter of the job's heartbeat timeout.
    durable_heartbeat_seconds: float = Field(3.0, gt=0, le=60)

    # --- API caches ---
    # Final states of completed jobs kept by each API process (a 1 000-file job's is ~1 MB).
    completed_cache_mb: int = Field(64, ge=1)

    # --- estimates ---
    # Time per file announced at initiate (`estimatedTimeMs`) until this API process has seen
    # jobs finish; from then on the observed time per file.
    estimated_ms_per_file: int = Field(5_000, ge=1)

    # --- local stack ---
    data_dir: Path = Path("data")
    temporal_port: Port = 7233
    temporal_ui_port: Port = 8233
    s3_port: Port = 9000
    nats_port: Port = 4222

    @model_validator(mode="after")
    def _check_ranges(self) -> Self:
        if self.download_delay_min_ms > self.download_delay_max_ms:
            raise ValueError("DOWNLOAD_DELAY_MIN_MS must not exceed DOWNLOAD_DELAY_MAX_MS")
        for net in self.trusted_proxy_networks:
            _ = net  # parsed eagerly so a bad value fails at start
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        try:
            return tuple(
                ipaddress.ip_network(p.strip(), strict=False)
                for p in self.trusted_proxies.split(",")
                if p.strip()
            )
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {exc}") from exc

    @property
    def api_keys(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        for pair in (self.auth_api_keys or "").split(","):
            key, _, owner = pair.strip().partition("=")
            if key:
                keys[key] = owner or key
        return keys

    @field_validator("request_seal_legacy_before", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("owner_weights", mode="before")
    @classmethod
    def _parse_owner_weights(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        weights: dict[str, float] = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            owner, _, weight = pair.rpartition("=")
            if not owner:
                raise ValueError(f"{pair!r} is not owner=weight")
            weights[owner] = float(weight)
        return weights

    @field_validator("owner_weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, float]) -> dict[str, float]:
        if any(weight <= 0 for weight in value.values()):
            raise ValueError("weights must be positive")
        return value

    @field_validator("temporal_tls", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("payload_encryption_keys")
    @classmethod
    def _parse_encryption_keys(cls, value: str | None) -> str | None:
        if value:
            parse_encryption_keys(value)
        return value

    @property
    def encryption_keys(self) -> list[tuple[str, bytes]]:
        return parse_encryption_keys(self.payload_encryption_keys or "")

    @property
    def codec_origins(self) -> list[str]:
        origins = self.codec_cors_origins or self.temporal_ui_url
        return [o.strip().rstrip("/") for o in origins.split(",") if o.strip()]

    def temporal_environment(self) -> dict[str, str]:
        """Temporal's client variables as the SDK reads them: the process environment, with
        what these settings were given (environment, `.env` or code) on top."""
        # An empty variable (`TEMPORAL_API_KEY=` as in .env.example) is an unset one.
        env = {k: v for k, v in os.environ.items() if v or not k.startswith("TEMPORAL_")}
        for name in self.model_fields_set:
            value = getattr(self, name)
            if not name.startswith("temporal_") or value is None:
                continue
            env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
            if not value and not isinstance(value, bool):
                del env[name.upper()]
        return env

    def temporal_client_config(self) -> ClientConnectConfig:
        """`Client.connect` arguments: address, namespace, API key, TLS (ValueError if unusable)."""
        return temporalenv.client_config(self.temporal_environment())

    def owner_weight(self, owner: str) -> float:
        return self.owner_weights.get(owner, 1.0)

    @field_validator("owner_priority_ceilings", mode="before")
    @classmethod
    def _parse_priority_ceilings(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        ceilings: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            owner, _, priority = pair.rpartition("=")
            if not owner:
                raise ValueError(f"{pair!r} is not owner=priority")
            ceilings[owner] = priority
        return ceilings

    @field_validator("owner_priority_ceilings")
    @classmethod
    def _priority_range(cls, value: dict[str, int]) -> dict[str, int]:
        if any(not 1 <= priority <= 5 for priority in value.values()):
            raise ValueError("priorities are 1 (most urgent) to 5")
        return value

    def priority_ceiling_of(self, owner: str) -> int:
        return self.owner_priority_ceilings.get(owner, self.priority_ceiling)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_jwt_secret or self.auth_jwt_public_key or self.api_keys)

    @property
    def bus_enabled(self) -> bool:
        return bool(self.nats_url.strip())

    @property
    def part_size(self) -> int:
        return self.s3_part_size_mb * 1024 * 1024

    @property
    def prefetch_buffer_bytes(self) -> int:
        return self.prefetch_buffer_mb * 1024 * 1024

    @property
    def io_threads(self) -> int:
        """Threads (and pooled connections) for blocking S3 calls: a job's read-ahead, its
        upload, and room for other jobs."""
        return max(32, 2 * self.prefetch_requests + 8)

    def source_key(self, file_id: int) -> str:
        return self.s3_source_key_template.format(file_id=file_id)

    def archive_key(self, job_id: str, run_id: str | None = None, part: int = 1) -> str:
        """The archive of a job's run, part `part`: `archives/J.zip` (runs of earlier versions),
        `archives/J.<run id>.zip`, `archives/J.<run id>.part2.zip`, ... One object per run, so a
        later run under the same id never replaces what an earlier run's link serves."""
        key = self.s3_archive_key_template.format(job_id=job_id)
        if run_id is None and part == 1:
            return key
        stem, ext = (key[:-4], ".zip") if key.endswith(".zip") else (key, "")
        if run_id:
            stem += f".{run_id}"
        if part > 1:
            stem += f".part{part}"
        return stem + ext

    @property
    def request_seal_key(self) -> bytes:
        """The key requests are sealed with: REQUEST_SEAL_SECRET, or outside production one
        derived from the S3 credential (the same for every process of one local stack)."""
        if self.request_seal_secret:
            return self.request_seal_secret.encode()
        material = f"{self.s3_access_key_id}\n{self.s3_secret_access_key}".encode()
        return hashlib.sha256(b"request-seal\n" + material).digest()


def parse_encryption_keys(value: str) -> list[tuple[str, bytes]]:
    """`id:base64key,...` → [(id, key)] in order; ValueError naming the bad entry."""
    keys: list[tuple[str, bytes]] = []
    for pair in filter(None, (p.strip() for p in value.split(","))):
        key_id, _, encoded = pair.partition(":")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            key = b""
        if not key_id or len(key) != 32 or key_id in dict(keys):
            raise ValueError(f"entry {key_id or pair[:8]!r}: want a new id:base64 of 32 bytes")
        keys.append((key_id, key))
    return keys


def describe_error(exc: ValidationError) -> str:
    """One line per bad variable, naming it the way it is set in the environment."""
    lines = []
    for err in exc.errors():
        name = "_".join(str(p) for p in err["loc"]).upper() or "configuration"
        value = err.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
        lines.append(f"invalid configuration: {name}: {err['msg']}{shown}")
    return "\n".join(lines)


# Values published in this repository or well known: never secrets in production.
EXAMPLE_SECRETS = frozenset({"change-me", "changeme", "secret", "minioadmin", "password"})
DEFAULT_S3_CREDENTIALS = frozenset({("minioadmin", "minioadmin")})
MIN_SECRET_BYTES = 32


def _weak(secret: str | None) -> bool:
    return secret is not None and (
        secret in EXAMPLE_SECRETS or len(secret.encode()) < MIN_SECRET_BYTES
    )


# X-Forwarded-For believed from networks wider than these would let nearly anyone choose the
# address the rate limits and stream caps count.
MIN_PROXY_PREFIX = {4: 8, 6: 48}
MIN_API_KEY_CHARS = 32


def production_problems(settings: Settings, process: Process | None = None) -> list[str]:
    """Why these settings are unsafe to expose, one line each (empty: safe enough to start).

    `process` limits the checks to what that process uses (None: every check)."""
    api = process in (None, Process.api)
    worker = process in (None, Process.worker)
    problems = []
    if api and not settings.auth_enabled:
        problems.append(
            "no authentication: set AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY or AUTH_API_KEYS"
        )
    if worker and _weak(settings.callback_secret):
        problems.append(
            f"CALLBACK_SECRET is an example value or shorter than {MIN_SECRET_BYTES} bytes"
        )
    # Empty (compose's `${AUTH_JWT_SECRET:-}` with API keys alone) is unset.
    if api and _weak(settings.auth_jwt_secret or None):
        problems.append(
            f"AUTH_JWT_SECRET is an example value or shorter than {MIN_SECRET_BYTES} bytes"
        )
    if api and (settings.stream_ticket_secret is None or _weak(settings.stream_ticket_secret)):
        problems.append(
            f"STREAM_TICKET_SECRET must be set (the same on every API replica), at least "
            f"{MIN_SECRET_BYTES} bytes"
        )
    if (api or worker) and (
        settings.request_seal_secret is None or _weak(settings.request_seal_secret)
    ):
        problems.append(
            f"REQUEST_SEAL_SECRET must be set (API and worker), at least {MIN_SECRET_BYTES} bytes"
        )
    credentials = [(settings.s3_access_key_id, settings.s3_secret_access_key)]
    if settings.s3_presign_access_key_id and settings.s3_presign_secret_access_key:
        credentials.append(
            (settings.s3_presign_access_key_id, settings.s3_presign_secret_access_key)
        )
    if any(pair in DEFAULT_S3_CREDENTIALS or _weak(pair[1]) for pair in credentials):
        problems.append("S3 credentials are well-known defaults or a short secret")
    if api and not settings.s3_public_endpoint:
        problems.append(
            "S3_PUBLIC_ENDPOINT is unset: download links would name the internal S3 endpoint"
        )
    if settings.bus_enabled and (not settings.nats_user or _weak(settings.nats_password)):
        problems.append(
            f"NATS_URL is set without NATS_USER and a NATS_PASSWORD of at least "
            f"{MIN_SECRET_BYTES} bytes"
        )
    if api:
        problems.extend(_api_problems(settings))
    if worker and settings.callback_allow_private:
        problems.append(
            "CALLBACK_ALLOW_PRIVATE=true: callbacks could reach the service's private network"
        )
    return problems


def _api_problems(settings: Settings) -> list[str]:
    """The checks of what only the API uses: proxies, presigning, API keys, JWT claims."""
    problems = []
    broad = [
        str(net)
        for net in settings.trusted_proxy_networks
        if net.prefixlen < MIN_PROXY_PREFIX[net.version]
    ]
    if broad:
        problems.append(
            f"TRUSTED_PROXIES is too broad ({', '.join(broad)}): name the proxies in front, "
            f"IPv4 /{MIN_PROXY_PREFIX[4]} or narrower, IPv6 /{MIN_PROXY_PREFIX[6]} or narrower"
        )
    presign = settings.s3_presign_access_key_id
    if not (presign and settings.s3_presign_secret_access_key):
        problems.append(
            "S3_PRESIGN_ACCESS_KEY_ID / S3_PRESIGN_SECRET_ACCESS_KEY unset: download links "
            "must be signed by a read-only user"
        )
    elif presign == settings.s3_access_key_id:
        problems.append(
            "S3_PRESIGN_ACCESS_KEY_ID is the service's own S3 user: links must be signed by a "
            "read-only user of their own"
        )
    short = [
        key
        for key in settings.api_keys
        if not key.startswith("sha256:") and len(key) < MIN_API_KEY_CHARS
    ]
    if short:
        problems.append(
            f"AUTH_API_KEYS: {len(short)} key(s) shorter than {MIN_API_KEY_CHARS} characters"
        )
    if settings.auth_jwt_public_key and not (
        settings.auth_jwt_audience and settings.auth_jwt_issuer
    ):
        problems.append(
            "AUTH_JWT_PUBLIC_KEY needs AUTH_JWT_AUDIENCE and AUTH_JWT_ISSUER: else any token "
            "that key's issuer signed, for any service, is accepted"
        )
    return problems


def load_settings(process: Process | None = None, **overrides: object) -> Settings:
    """Read settings; on a bad value exit with one clear line per variable, no traceback.

    With ENVIRONMENT=production, an unsafe configuration stops the process the same way, one
    line per problem: the API and the worker refuse to start wide open (each checked for what
    it uses: `process`).
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        raise SystemExit(2) from None
    try:
        temporal = settings.temporal_client_config()
    except ValueError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    problems = production_problems(settings, process)
    # A one-shot tool (the seed job) does not reach Temporal.
    uses_temporal = process is not Process.tool
    if (
        uses_temporal
        and temporalenv.is_plaintext(temporal)
        and not settings.temporal_trusted_network
    ):
        problems.append(
            "the connection to Temporal is plaintext: give TLS (TEMPORAL_TLS_*, TEMPORAL_API_KEY "
            "or a TEMPORAL_PROFILE with them) or set TEMPORAL_TRUSTED_NETWORK=true"
        )
    if settings.environment is Environment.production and problems:
        for problem in problems:
            print(f"unsafe production configuration: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return settings
