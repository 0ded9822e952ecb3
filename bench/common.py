"""What the benchmarks share: credentials of their own S3 server, settings, memory readings."""

from __future__ import annotations

from pathlib import Path

from core.config import Settings

KEY, SECRET = "benchaccess", "benchsecret123"
MIB = 1 << 20


def bench_settings(endpoint: str, **extra: object) -> Settings:
    """Settings for a benchmark's own servers, independent of any `.env`."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        s3_endpoint=endpoint,
        s3_access_key_id=KEY,
        s3_secret_access_key=SECRET,
        s3_bucket_name="bench",
        worker_metrics_port=0,
        **extra,  # type: ignore[arg-type]
    )


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of the process's resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not reported")
