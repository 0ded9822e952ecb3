"""Property-based fuzzing of every operation in /openapi.json: no input makes the API answer 5xx."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import serve


async def test_no_input_causes_a_server_error(settings: Settings, store: ObjectStore) -> None:
    # Short request timeout: fuzzed `start` calls hand back 202 quickly instead of waiting.
    quick = settings.model_copy(update={"request_timeout_ms": 1000})
    async with serve(quick) as (client, _):
        base_url = str(client.base_url).rstrip("/")
        spec = (await client.get("/openapi.json")).json()
        schema = schemathesis.openapi.from_dict(spec)
        strategy = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(
            GenerationMode.NEGATIVE
        )
        failures: list[str] = []

        @hypothesis_settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case: Case[Any]) -> None:
            # Event streams of existing jobs never end by themselves; fuzzed ids do not exist.
            response = case.call(base_url=base_url, timeout=10)
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except Exception as exc:
                failures.append(f"{case.method} {case.formatted_path}: {exc}")
                raise

        await asyncio.to_thread(fuzz)
        assert not failures
        # The API is still healthy after the fuzzing.
        health = await client.get("/health")
        assert health.status_code == 200, health.text
        assert isinstance(health, httpx.Response)
