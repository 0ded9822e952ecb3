"""Bounds and defaults of a job's retry, heartbeat and deadline options, declared once.

A deployment sets them (`core.config.Settings`) and every job carries them
(`workflows.models.JobOptions`), checked by the workflow itself since anyone who reaches Temporal
can start one; the settings take exactly the values a job may carry, so workers and the API
refuse to start with options their own jobs would fail on. Typing and pydantic only: this is the
one module of `core` the Temporal contract imports, and it brings nothing else with it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# The seeds' policy for attempts failing on storage and network errors: 3 attempts,
# 5 s -> 10 s -> 20 s.
MaxAttempts = Annotated[int, Field(ge=1, le=20)]
MAX_ATTEMPTS = 3
InitialIntervalSeconds = Annotated[float, Field(gt=0, le=3600)]
INITIAL_INTERVAL_SECONDS = 5.0
BackoffCoefficient = Annotated[float, Field(ge=1, le=10)]
BACKOFF_COEFFICIENT = 2.0
MaxIntervalSeconds = Annotated[float, Field(gt=0, le=86_400)]
MAX_INTERVAL_SECONDS = 20.0

# Cancellation and lost workers are only noticed through heartbeats.
HeartbeatTimeoutSeconds = Annotated[float, Field(ge=1, le=3600)]
HEARTBEAT_TIMEOUT_SECONDS = 30.0

# A job's packaging, every attempt and wait included (settings in minutes, jobs in seconds).
DEADLINE_MINUTES = 360
MIN_DEADLINE_MINUTES = 1
MAX_DEADLINE_MINUTES = 7 * 24 * 60

# A job's archive split into parts of at most this many bytes (a single file larger than the
# limit makes a part of its own): from 1 MiB up to what one S3 object may hold (5 TiB).
MIN_ARCHIVE_BYTES = 1 << 20
MAX_ARCHIVE_BYTES = 5 << 40
ArchiveBytes = Annotated[int, Field(ge=MIN_ARCHIVE_BYTES, le=MAX_ARCHIVE_BYTES)]
