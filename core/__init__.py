"""Shared infrastructure of the API, the worker and the activities: settings, telemetry, S3,
the zip format."""
