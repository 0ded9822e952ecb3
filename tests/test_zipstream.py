"""Tests for core.zipstream: archives are checked with zipfile and, when present, unzip -t."""

from __future__ import annotations

import io
import json
import random
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.zipstream import ZIP64_LIMIT, ResumableZipWriter

MTIME = datetime(2024, 5, 1, 12, 30, 44, tzinfo=UTC)
NON_ASCII = "données/été ✓ 日本.txt"

# name, content, deflate
Source = tuple[str, bytes, bool]


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


def text(n: int) -> bytes:
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    return (line * (n // len(line) + 1))[:n]


def run_job(
    sources: Sequence[Source],
    *,
    chunk: int = 1000,
    crash_at: Iterable[tuple[int, int]] = (),
    crash: bool = True,
    zip64_limit: int = ZIP64_LIMIT,
) -> bytes:
    """Write ``sources`` like a packaging job and return the archive.

    At each point of ``crash_at`` — (entry index, bytes of it written), or (index, -1) before
    the entry starts, (len(sources), -1) before finish — a checkpoint is taken. With ``crash``
    the old writer then writes on a little (those bytes are lost), the output is truncated to the
    checkpoint's offset and a new writer continues from the JSON-round-tripped state.
    """
    points = set(crash_at)
    out = bytearray()
    writer = ResumableZipWriter(mtime=MTIME, zip64_limit=zip64_limit)
    index, pos = 0, 0

    def checkpoint_here() -> None:
        nonlocal writer, index, pos
        key = (index, pos if writer.in_entry else -1)
        if key not in points:
            return
        points.discard(key)
        extra, state = writer.checkpoint()
        out.extend(extra)
        assert state["offset"] == writer.offset == len(out)
        saved = json.dumps(state)
        if not crash:
            return
        data = sources[index][1] if index < len(sources) else b""
        if writer.in_entry and pos < len(data):
            out.extend(writer.write(data[pos : pos + chunk]))
        else:
            out.extend(b"lost after the checkpoint")
        restored = json.loads(saved)
        del out[restored["offset"] :]
        writer = ResumableZipWriter.from_state(restored)
        assert writer.offset == len(out)
        index = len(restored["entries"])
        pos = restored["current"]["size"] if restored["current"] is not None else 0

    while index < len(sources):
        checkpoint_here()
        name, data, deflate = sources[index]
        if not writer.in_entry:
            out.extend(writer.start_entry(name, len(data), deflate=deflate))
        while True:
            checkpoint_here()
            if pos == len(data):
                break
            stops = [p for i, p in points if i == index and p > pos]
            end = min([len(data), pos + chunk, *stops])
            out.extend(writer.write(data[pos:end]))
            pos = end
        out.extend(writer.end_entry())
        index, pos = index + 1, 0
    checkpoint_here()
    out.extend(writer.finish())
    assert not points, f"checkpoints never reached: {points}"
    assert writer.offset == len(out)
    return bytes(out)


def check_archive(archive: bytes, sources: Sequence[Source]) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [name for name, _, _ in sources]
        for info, (name, data, deflate) in zip(infos, sources, strict=True):
            assert info.file_size == len(data)
            assert zlib.crc32(data) == info.CRC
            assert info.compress_type == (zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
            assert info.flag_bits & 0x0808 == 0x0808
            assert info.date_time == (2024, 5, 1, 12, 30, 44)
            assert zf.read(name) == data
    return infos


def unzip_test(archive: bytes | Path, tmp_path: Path, members: Sequence[str] = ()) -> None:
    """``unzip -t`` must accept the archive or these members of it (skipped only without unzip)."""
    if shutil.which("unzip") is None:
        return
    if isinstance(archive, bytes):
        path = tmp_path / "archive.zip"
        path.write_bytes(archive)
    else:
        path = archive
    command = ["unzip", "-tq", str(path), *members]
    result = subprocess.run(command, capture_output=True, timeout=120)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 0, output
    assert "No errors detected" in output, output
    assert "warning" not in output.lower(), output


def local_header(archive: bytes, offset: int) -> tuple[int, int, int, bytes, bytes]:
    """(version needed, flags, method, name, extra) of the local header at ``offset``."""
    fields = struct.unpack_from("<IHHHHHIIIHH", archive, offset)
    assert fields[0] == 0x04034B50
    name_end = offset + 30 + fields[9]
    name = archive[offset + 30 : name_end]
    return fields[1], fields[2], fields[3], name, archive[name_end : name_end + fields[10]]


def extra_ids(extra: bytes) -> list[int]:
    ids, pos = [], 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        ids.append(tag)
        pos += 4 + size
    return ids


MIXED: list[Source] = [
    ("a.bin", rand(10_000), False),
    ("empty.txt", b"", False),
    (NON_ASCII, text(7_777), False),
    ("dir/b.bin", rand(3_001, seed=1), False),
]
MIXED_DEFLATE: list[Source] = [
    ("text.txt", text(50_000), True),
    ("random.bin", rand(20_000), True),
    ("empty.txt", b"", True),
    (NON_ASCII, text(12_345), True),
    ("stored.bin", rand(4_000, seed=2), False),
]


# ---------------------------------------------------------------------- plain archives
def test_stored_archive_reads_back(tmp_path: Path) -> None:
    archive = run_job(MIXED)
    infos = check_archive(archive, MIXED)
    assert all(i.compress_size == i.file_size for i in infos)
    assert all(i.create_system == 3 and i.external_attr >> 16 == 0o100644 for i in infos)
    assert len(archive) == ResumableZipWriter.stored_archive_size(
        [(name, len(data)) for name, data, _ in MIXED]
    )
    assert b"PK\x06\x06" not in archive[-200:]  # no zip64 records for a small archive
    unzip_test(archive, tmp_path)


def test_deflated_archive_reads_back(tmp_path: Path) -> None:
    archive = run_job(MIXED_DEFLATE, chunk=4096)
    infos = check_archive(archive, MIXED_DEFLATE)
    assert infos[0].compress_size < infos[0].file_size // 10
    unzip_test(archive, tmp_path)


def test_output_is_deterministic() -> None:
    assert run_job(MIXED_DEFLATE) == run_job(MIXED_DEFLATE)
    assert run_job(MIXED, chunk=777) == run_job(MIXED, chunk=5000)


def test_headers_carry_flags_and_no_zip64_below_limit() -> None:
    archive = run_job(MIXED_DEFLATE)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for info in zf.infolist():
            version, flags, method, name, extra = local_header(archive, info.header_offset)
            assert (version, flags, extra) == (20, 0x0808, b"")
            assert name == info.filename.encode("utf-8")
            assert method == info.compress_type
            assert info.extra == b""


def test_stored_write_returns_the_chunk_itself() -> None:
    writer = ResumableZipWriter()
    writer.start_entry("x", 9)
    chunk = b"abc"
    assert writer.write(chunk) is chunk
    assert writer.write(bytearray(b"def")) == b"def"
    assert writer.write(memoryview(b"ghi")) == b"ghi"
    writer.end_entry()
    _, state = writer.checkpoint()
    assert state["entries"][0][2] == zlib.crc32(b"abcdefghi")


@pytest.mark.parametrize(
    ("mtime", "expected"),
    [
        (datetime(2024, 5, 1, 12, 30, 44), (2024, 5, 1, 12, 30, 44)),
        (datetime(2001, 12, 31, 23, 59, 59), (2001, 12, 31, 23, 59, 58)),
        (None, (1980, 1, 1, 0, 0, 0)),
        ((((2010 - 1980) << 9) | (7 << 5) | 4, (8 << 11) | (15 << 5) | 5), (2010, 7, 4, 8, 15, 10)),
    ],
)
def test_mtime(mtime: datetime | tuple[int, int] | None, expected: tuple[int, ...]) -> None:
    writer = ResumableZipWriter(mtime=mtime)
    archive = writer.start_entry("f", 1) + writer.write(b"x") + writer.end_entry()
    archive += writer.finish()
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.infolist()[0].date_time == expected


@pytest.mark.parametrize("mtime", [datetime(1979, 12, 31), (70000, 0), (0, -1)])
def test_mtime_out_of_range(mtime: datetime | tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        ResumableZipWriter(mtime=mtime)


# ---------------------------------------------------------------------- checkpoint / resume
STORED_CRASHES = [
    [(0, 0)],  # right after the first local header
    [(0, 4321)],
    [(0, 10_000)],  # all data written, before end_entry
    [(1, -1)],  # between entries
    [(1, 0)],  # inside the empty entry
    [(2, 1), (2, 5000), (3, 3000)],  # several resumes in a row
    [(4, -1)],  # before finish
]


@pytest.mark.parametrize("crash_at", STORED_CRASHES)
def test_resume_stored_is_byte_identical(crash_at: list[tuple[int, int]], tmp_path: Path) -> None:
    uninterrupted = run_job(MIXED)
    resumed = run_job(MIXED, crash_at=crash_at)
    assert resumed == uninterrupted
    check_archive(resumed, MIXED)
    assert run_job(MIXED, crash_at=crash_at, crash=False) == uninterrupted
    unzip_test(resumed, tmp_path)


def test_stored_checkpoint_state_mid_entry() -> None:
    data = rand(10_000)
    writer = ResumableZipWriter(mtime=MTIME)
    header = writer.start_entry("one", 100)
    writer.write(b"1" * 100)
    writer.end_entry()
    second_offset = writer.offset
    writer.start_entry(NON_ASCII, len(data))
    writer.write(data[:6000])
    extra, state = writer.checkpoint()
    assert extra == b""
    assert json.loads(json.dumps(state)) == state
    assert state["offset"] == second_offset + 30 + len(NON_ASCII.encode()) + 6000
    assert state["current"] == {
        "name": NON_ASCII,
        "method": 0,
        "declared": 10_000,
        "crc": zlib.crc32(data[:6000]),
        "size": 6000,
        "csize": 6000,
        "header_offset": second_offset,
        "zip64": False,
    }
    assert state["entries"] == [["one", 0, zlib.crc32(b"1" * 100), 100, 100, 0, False]]
    assert len(header) == 33


DEFLATE_CRASHES = [
    [(0, 0)],
    [(0, 1)],
    [(0, 25_000)],
    [(0, 50_000)],
    [(1, 7_000), (1, 7_001), (1, 19_999)],
    [(2, 0), (3, -1), (3, 6000)],
    [(4, 2000), (5, -1)],
]


@pytest.mark.parametrize("crash_at", DEFLATE_CRASHES)
def test_resume_deflated(crash_at: list[tuple[int, int]], tmp_path: Path) -> None:
    resumed = run_job(MIXED_DEFLATE, crash_at=crash_at, chunk=3000)
    check_archive(resumed, MIXED_DEFLATE)
    # A resumed run emits exactly what an uninterrupted run checkpointing there emits.
    assert resumed == run_job(MIXED_DEFLATE, crash_at=crash_at, crash=False, chunk=3000)
    unzip_test(resumed, tmp_path)


def test_deflate_checkpoint_flushes_to_a_byte_boundary() -> None:
    data = text(40_000)
    writer = ResumableZipWriter(mtime=MTIME)
    header = writer.start_entry("t", len(data), deflate=True)
    body = writer.write(data[:30_000])
    extra, state = writer.checkpoint()
    assert extra.endswith(b"\x00\x00\xff\xff")  # empty stored block of a full flush
    assert state["current"] is not None
    assert state["current"]["csize"] == len(body) + len(extra)
    assert state["current"]["crc"] == zlib.crc32(data[:30_000])
    assert state["offset"] == len(header) + len(body) + len(extra)
    # Nothing new since the flush: the next checkpoint emits nothing.
    assert writer.checkpoint()[0] == b""
    # The flushed prefix alone decompresses to everything written so far.
    assert zlib.decompressobj(-15).decompress(body + extra) == data[:30_000]
    resumed = ResumableZipWriter.from_state(json.loads(json.dumps(state)))
    rest = resumed.write(data[30_000:]) + resumed.end_entry()
    stream = body + extra + rest[:-16]
    assert zlib.decompress(stream, -15) == data
    assert rest[-16:] == struct.pack("<IIII", 0x08074B50, zlib.crc32(data), len(stream), len(data))


def test_checkpoint_after_finish() -> None:
    writer = ResumableZipWriter()
    writer.start_entry("a", 0)
    writer.end_entry()
    writer.finish()
    extra, state = writer.checkpoint()
    assert extra == b"" and state["finished"] is True
    restored = ResumableZipWriter.from_state(json.loads(json.dumps(state)))
    assert restored.offset == writer.offset
    with pytest.raises(RuntimeError):
        restored.start_entry("b", 0)


def _good_state() -> dict[str, object]:
    writer = ResumableZipWriter()
    writer.start_entry("a", 3)
    writer.write(b"abc")
    writer.end_entry()
    writer.start_entry("b", 10, deflate=True)
    writer.write(b"12345")
    state: dict[str, object] = json.loads(json.dumps(writer.checkpoint()[1]))
    return state


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("version", 99),
        ("offset", -1),
        ("offset", "12"),
        ("mtime", [1]),
        ("zip64_limit", 1 << 40),
        ("compresslevel", 12),
        ("finished", 1),
        ("entries", [["a", 0, 1, 2, 3]]),
        ("entries", [["a", 3, 1, 2, 2, 0, False]]),
        ("current", {"name": "b"}),
        ("current", "b"),
    ],
)
def test_from_state_rejects_malformed(key: str, value: object) -> None:
    state = _good_state()
    ResumableZipWriter.from_state(state)
    state[key] = value
    with pytest.raises(ValueError, match="invalid zip writer state"):
        ResumableZipWriter.from_state(state)


def test_from_state_rejects_missing_key() -> None:
    state = _good_state()
    del state["entries"]
    with pytest.raises(ValueError, match="invalid zip writer state"):
        ResumableZipWriter.from_state(state)


# ---------------------------------------------------------------------- size checks
@pytest.mark.parametrize("deflate", [False, True])
def test_write_beyond_declared_size(deflate: bool) -> None:
    writer = ResumableZipWriter()
    writer.start_entry("grew.bin", 10, deflate=deflate)
    writer.write(b"123456")
    offset = writer.offset
    with pytest.raises(ValueError, match=r"'grew\.bin': 12 bytes written, more than .* 10"):
        writer.write(b"abcdef")
    assert writer.offset == offset  # the failed write changed nothing
    writer.write(b"7890")
    writer.end_entry()
    assert writer.finish()[-22:-18] == b"PK\x05\x06"


@pytest.mark.parametrize("deflate", [False, True])
def test_end_entry_below_declared_size(deflate: bool) -> None:
    writer = ResumableZipWriter()
    writer.start_entry("shrank.bin", 10, deflate=deflate)
    writer.write(b"12345")
    with pytest.raises(ValueError, match=r"'shrank\.bin': 5 bytes written, but .* is 10"):
        writer.end_entry()
    assert writer.in_entry


def test_resumed_writer_still_checks_sizes() -> None:
    writer = ResumableZipWriter()
    writer.start_entry("a", 8)
    writer.write(b"1234")
    resumed = ResumableZipWriter.from_state(json.loads(json.dumps(writer.checkpoint()[1])))
    with pytest.raises(ValueError, match="more than its declared size"):
        resumed.write(b"56789")
    with pytest.raises(ValueError, match="declared size is 8"):
        resumed.end_entry()


def test_misuse_raises() -> None:
    writer = ResumableZipWriter()
    with pytest.raises(RuntimeError):
        writer.write(b"x")
    with pytest.raises(RuntimeError):
        writer.end_entry()
    writer.start_entry("a", 1)
    with pytest.raises(RuntimeError):
        writer.start_entry("b", 1)
    with pytest.raises(RuntimeError):
        writer.finish()
    writer.write(b"x")
    writer.end_entry()
    with pytest.raises(ValueError):
        writer.start_entry("", 1)
    with pytest.raises(ValueError):
        writer.start_entry("neg", -1)
    writer.finish()
    with pytest.raises(RuntimeError):
        writer.finish()
    with pytest.raises(RuntimeError):
        writer.start_entry("c", 1)


# ---------------------------------------------------------------------- sizes and zip64
SIZED: list[tuple[str, int]] = [
    ("a", 0),
    (NON_ASCII, 999),
    ("b", 1000),
    ("c/d", 1001),
    ("e", 5000),
    ("f", 1),
]


@pytest.mark.parametrize("limit", [ZIP64_LIMIT, 5000, 1000, 64, 1, 0])
def test_stored_archive_size_is_exact(limit: int, tmp_path: Path) -> None:
    sources = [(name, rand(size, seed=i), False) for i, (name, size) in enumerate(SIZED)]
    archive = run_job(sources, zip64_limit=limit)
    assert ResumableZipWriter.stored_archive_size(SIZED, zip64_limit=limit) == len(archive)
    check_archive(archive, sources)
    assert (b"PK\x06\x06" in archive[-120:]) == (limit < len(archive))
    unzip_test(archive, tmp_path)


def test_stored_archive_size_empty_archive() -> None:
    writer = ResumableZipWriter()
    assert ResumableZipWriter.stored_archive_size([]) == len(writer.finish()) == 22


def test_zip64_entry_sizes_forced(tmp_path: Path) -> None:
    limit = 1000
    sources: list[Source] = [
        ("small.bin", rand(999), False),
        ("exact.bin", rand(1000), False),
        ("big.bin", rand(5000), False),
        ("deflate-small.txt", text(900), True),  # threshold: 1000 - 1000 // 16 = 938
        ("deflate-big.txt", text(939), True),
        ("deflate-random.bin", rand(4000), True),
        (NON_ASCII, b"", False),
    ]
    expect_zip64 = [False, True, True, False, True, True, False]
    crash_at = [(2, 2500), (5, 1234)]
    archive = run_job(sources, zip64_limit=limit, crash_at=crash_at)
    assert archive == run_job(sources, zip64_limit=limit, crash_at=crash_at, crash=False)
    infos = check_archive(archive, sources)
    for info, zip64 in zip(infos, expect_zip64, strict=True):
        version, _, _, _, extra = local_header(archive, info.header_offset)
        assert (version == 45) == zip64
        # Both sizes, zero: they follow in the data descriptor (flag bit 3).
        assert extra == (struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b"")
        sizes = struct.unpack_from("<II", archive, info.header_offset + 18)
        assert sizes == ((0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (0, 0))
        data_end = info.header_offset + 30 + len(info.filename.encode()) + len(extra)
        data_end += info.compress_size
        descriptor = archive[data_end : data_end + (24 if zip64 else 16)]
        fmt = "<IIQQ" if zip64 else "<IIII"
        assert struct.unpack(fmt, descriptor) == (
            0x08074B50,
            info.CRC,
            info.compress_size,
            info.file_size,
        )
        assert archive[data_end + len(descriptor) : data_end + len(descriptor) + 2] == b"PK"
        assert (1 in extra_ids(info.extra)) == (zip64 or info.header_offset >= limit)
    unzip_test(archive, tmp_path)


def test_zip64_offsets_only(tmp_path: Path) -> None:
    # Entries well below the limit, but later ones start beyond it: only offsets are zip64.
    limit = 1 << 16
    sources = [(f"part-{i:02d}.bin", rand(10_000, seed=i), False) for i in range(12)]
    archive = run_job(sources, zip64_limit=limit, crash_at=[(7, 5000)])
    assert archive == run_job(sources, zip64_limit=limit)
    infos = check_archive(archive, sources)
    for info in infos:
        local_extra = local_header(archive, info.header_offset)[4]
        assert local_extra == b""
        if info.header_offset >= limit:
            assert info.extra == struct.pack("<HHQ", 1, 8, info.header_offset)
        else:
            assert info.extra == b""
    assert b"PK\x06\x06" in archive and b"PK\x06\x07" in archive
    assert ResumableZipWriter.stored_archive_size(
        [(n, len(d)) for n, d, _ in sources], zip64_limit=limit
    ) == len(archive)
    unzip_test(archive, tmp_path)


def test_zip64_compressed_size_only(tmp_path: Path) -> None:
    # A deflate entry declared below the zip64 threshold whose compressed size (random data
    # plus many flushes) reaches the limit: only the central record's compressed size is zip64.
    limit = 1000
    data = rand(930)
    crash_at = [(0, p) for p in range(10, 930, 20)]
    sources: list[Source] = [("noisy.bin", data, True)]
    archive = run_job(sources, zip64_limit=limit, crash_at=crash_at)
    infos = check_archive(archive, sources)
    assert infos[0].compress_size >= limit
    assert local_header(archive, 0)[4] == b""
    assert infos[0].extra == struct.pack("<HHQ", 1, 8, infos[0].compress_size)
    unzip_test(archive, tmp_path)


@pytest.mark.parametrize("count", [0xFFFE, 0xFFFF, 0x10000])
def test_zip64_entry_count(count: int, tmp_path: Path) -> None:
    writer = ResumableZipWriter(mtime=MTIME)
    parts: list[bytes] = []
    for i in range(count):
        parts.append(writer.start_entry(f"{i:05x}", 1))
        parts.append(writer.write(b"%c" % (i & 0xFF)))
        parts.append(writer.end_entry())
        if i == count // 2:
            extra, state = writer.checkpoint()
            parts.append(extra)
            writer = ResumableZipWriter.from_state(json.loads(json.dumps(state)))
    parts.append(writer.finish())
    archive = b"".join(parts)
    names = [(f"{i:05x}", 1) for i in range(count)]
    assert ResumableZipWriter.stored_archive_size(names) == len(archive)
    eocd = struct.unpack("<IHHHHIIH", archive[-22:])
    zip64 = count >= 0xFFFF
    assert eocd[3:5] == ((0xFFFF, 0xFFFF) if zip64 else (count, count))
    if zip64:
        assert archive[-42:-38] == b"PK\x06\x07"
        assert archive[-98:-94] == b"PK\x06\x06"
    else:
        assert b"PK\x06\x07" not in archive[-120:]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        infos = zf.infolist()
        assert len(infos) == count
        assert zf.read(infos[-1]) == b"%c" % ((count - 1) & 0xFF)
        assert zf.testzip() is None
    if count == 0x10000:
        unzip_test(archive, tmp_path)


@pytest.mark.slow
def test_real_zip64_entry_over_4gib(tmp_path: Path) -> None:
    """A > 4 GiB stored entry at the real limit, streamed to a file on disk."""
    chunk = bytes(4 << 20)
    big_size = (1 << 32) + (5 << 20) + 123
    first, last = b"first entry\n", "last entry, beyond 4 GiB ✓\n".encode()
    path = tmp_path / "big.zip"
    try:
        with path.open("wb") as out:
            writer = ResumableZipWriter(mtime=MTIME)
            out.write(writer.start_entry("first.txt", len(first)))
            out.write(writer.write(first))
            out.write(writer.end_entry())
            out.write(writer.start_entry("big.bin", big_size))
            crc, written, resumed = 0, 0, False
            while written < big_size:
                piece = chunk if big_size - written >= len(chunk) else chunk[: big_size - written]
                out.write(writer.write(piece))
                crc = zlib.crc32(piece, crc)
                written += len(piece)
                if not resumed and written > 1 << 32:
                    extra, state = writer.checkpoint()
                    out.write(extra)
                    writer = ResumableZipWriter.from_state(json.loads(json.dumps(state)))
                    assert out.tell() == writer.offset
                    resumed = True
            out.write(writer.end_entry())
            out.write(writer.start_entry("last.txt", len(last)))
            out.write(writer.write(last))
            out.write(writer.end_entry())
            out.write(writer.finish())
            assert out.tell() == writer.offset
        size = path.stat().st_size
        assert size == ResumableZipWriter.stored_archive_size(
            [("first.txt", len(first)), ("big.bin", big_size), ("last.txt", len(last))]
        )
        with zipfile.ZipFile(path) as zf:
            info_first, info_big, info_last = zf.infolist()
            assert (info_big.filename, info_big.file_size, info_big.CRC) == (
                "big.bin",
                big_size,
                crc,
            )
            assert info_big.compress_size == big_size
            assert info_last.header_offset > 0xFFFFFFFF
            assert zf.read(info_last) == last
            assert zf.read(info_first) == first
        with path.open("rb") as f:
            f.seek(info_big.header_offset)
            head = f.read(64)
        version, _, _, _, extra = local_header(head, 0)
        assert version == 45 and extra_ids(extra) == [1]
        # unzip reads the zip64 end records and central directory; testing the 4 GiB member
        # too would double the run time.
        unzip_test(path, tmp_path, members=["first.txt", "last.txt"])
    finally:
        path.unlink(missing_ok=True)
