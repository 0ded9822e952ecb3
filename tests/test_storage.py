"""Storage against the real S3 server started by the fixtures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import urllib3
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import storage
from core.config import Settings
from core.storage import ObjectChanged, ObjectNotFound, ObjectStore, StorageUnavailable


def test_round_trip(store: ObjectStore, http: urllib3.PoolManager) -> None:
    store.put_bytes("downloads/10001.zip", b"hello world")
    info = store.stat("downloads/10001.zip")
    assert info.size == 11
    assert b"".join(store.read("downloads/10001.zip")) == b"hello world"
    assert b"".join(store.read("downloads/10001.zip", offset=6)) == b"world"
    url = store.presign("downloads/10001.zip", timedelta(minutes=5))
    assert http.request("GET", url).data == b"hello world"
    store.delete("downloads/10001.zip")
    assert store.stat_or_none("downloads/10001.zip") is None


def test_missing_object_is_typed(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.stat("downloads/12345.zip")


def test_multipart_upload_and_abort(store: ObjectStore) -> None:
    part1, part2 = b"a" * (5 * 1024 * 1024), b"tail"
    upload = store.create_upload("archives/x.zip")
    e1 = store.upload_part("archives/x.zip", upload, 1, part1)
    e2 = store.upload_part("archives/x.zip", upload, 2, part2)
    assert store.list_parts("archives/x.zip", upload) == {1: e1, 2: e2}
    store.complete_upload("archives/x.zip", upload, [(1, e1), (2, e2)])
    assert store.stat("archives/x.zip").size == len(part1) + len(part2)

    aborted = store.create_upload("archives/y.zip")
    store.upload_part("archives/y.zip", aborted, 1, b"partial")
    store.abort_upload("archives/y.zip", aborted)
    assert store.stat_or_none("archives/y.zip") is None
    assert [o.key for o in store.list_objects("archives/")] == ["archives/x.zip"]


def test_presigned_url_uses_public_endpoint(plain_settings: Settings) -> None:
    public = plain_settings.model_copy(update={"s3_public_endpoint": "https://files.example.com"})
    url = ObjectStore(public).presign("archives/a.zip", timedelta(hours=1), filename="a.zip")
    assert url.startswith("https://files.example.com/")
    assert "X-Amz-Signature=" in url
    assert "response-content-disposition" in url


def test_unreachable_storage_is_retryable(plain_settings: Settings) -> None:
    down = plain_settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:9"})
    with pytest.raises(StorageUnavailable) as err:
        ObjectStore(down).stat("downloads/10001.zip")
    assert err.value.retryable


def test_links_are_signed_with_the_read_only_credential(
    settings: Settings, store: ObjectStore, http: urllib3.PoolManager
) -> None:
    """With S3_PRESIGN_* set, a link names that user, never the read-write one."""
    store.put_bytes("downloads/10001.zip", b"hello")
    reader = settings.model_copy(
        update={"s3_presign_access_key_id": "reader", "s3_presign_secret_access_key": "r" * 40}
    )
    url = ObjectStore(reader).presign("downloads/10001.zip", timedelta(minutes=5))
    credential = urllib3.util.parse_url(url).query or ""
    assert "X-Amz-Credential=reader%2F" in credential
    assert settings.s3_access_key_id not in url
    # Signed by a user this S3 server does not know: refused, so the signature really is its.
    assert http.request("GET", url).status == 403


def test_list_parts_reads_every_page(store: ObjectStore) -> None:
    """S3 answers ListParts 1 000 parts a page; an upload past that is listed whole."""
    upload = store.create_upload("archives/many.zip")
    etags = {
        n: store.upload_part("archives/many.zip", upload, n, b"p%d" % n) for n in range(1, 1006)
    }
    pages = []
    list_page = store.client._list_parts

    def counted(*args: Any, **kwargs: Any) -> Any:
        pages.append(kwargs.get("part_number_marker"))
        return list_page(*args, **kwargs)

    store.client._list_parts = counted  # type: ignore[method-assign]
    assert store.list_parts("archives/many.zip", upload) == etags
    assert len(pages) == 2  # a second page, from the marker the first one gave
    store.abort_upload("archives/many.zip", upload)


def test_a_segment_read_tells_the_object_size(store: ObjectStore) -> None:
    store.put_bytes("downloads/10001.zip", b"hello world")
    head = store.read_segment("downloads/10001.zip", 0, 4)
    assert (head.data, head.size) == (b"hell", 11)
    tail = store.read_segment("downloads/10001.zip", 4, 100, head.etag)
    assert (tail.data, tail.size) == (b"o world", 11)
    store.put_bytes("downloads/10002.zip", b"")
    assert store.read_segment("downloads/10002.zip", 0, 4).size == 0
    with pytest.raises(ObjectNotFound):
        store.read_segment("downloads/10003.zip", 0, 4)
    with pytest.raises(ObjectChanged):
        store.read_segment("downloads/10001.zip", 50, 4)  # past the end: it shrank


def test_calls_are_traced_under_a_recorded_span_only(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a recorded span each call has its own; with nothing recorded, none is made."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(storage, "tracer", provider.get_tracer("test"))
    store.put_bytes("downloads/10001.zip", b"hello")
    assert spans.get_finished_spans() == ()
    with provider.get_tracer("test").start_as_current_span("packaging"):
        store.read_segment("downloads/10001.zip", 0, 4)
    names = [span.name for span in spans.get_finished_spans()]
    assert names == ["s3.get", "packaging"]
