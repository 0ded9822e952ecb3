"""Streaming ZIP writer whose state can be checkpointed as plain JSON and resumed elsewhere.

The writer never holds the archive: every method returns the bytes to append to the output,
and :meth:`ResumableZipWriter.checkpoint` (between entries or in the middle of one) returns a
JSON-serialisable state from which :meth:`ResumableZipWriter.from_state` rebuilds a writer, in
another process, that continues the same archive without re-reading what was already written.
Existing streaming writers (zipstream-ng, stream-zip, stdlib ``zipfile``) cannot resume an
archive mid-stream, which is why this module exists.

Format choices:

* entries are STORED or DEFLATED (raw deflate), with general-purpose flag bit 3 (CRC and sizes
  in a data descriptor after the data) and bit 11 (UTF-8 name), and one fixed modification
  time so that the output is deterministic;
* an entry whose declared size may reach ``zip64_limit`` (for deflate: exceeds
  ``zip64_limit - zip64_limit // 16``, a margin for incompressible data) gets a zip64 extra
  field in its local header, an 8-byte data descriptor and zip64 sizes in the central
  directory; a header offset at or beyond the limit is stored in the central directory's zip64
  extra field; 65535 entries or more, or a central directory that starts or ends at or beyond
  the limit, add the ZIP64 end-of-central-directory record and locator;
* the central directory may list one entry first (``finish(first=name)``) whatever its place
  in the data, so an entry written last (a manifest whose content is known only at the end)
  is the first that readers list;
* a checkpoint in a DEFLATED entry ends the compressor's output with ``Z_FULL_FLUSH``
  (byte-aligned, dictionary reset, no final block) and continues with a fresh compressor, so
  the raw deflate stream stays valid across a resume and the output is the same whether or not
  the writer was resumed.

Typical use::

    writer = ResumableZipWriter(mtime=created_at)
    out(writer.start_entry("a.bin", size))
    for chunk in source:
        out(writer.write(chunk))
    extra, state = writer.checkpoint()   # out(extra), then persist json.dumps(state)
    ...
    writer = ResumableZipWriter.from_state(json.loads(saved))  # output truncated to state["offset"]
    ...
    out(writer.end_entry())
    out(writer.finish())
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final, NamedTuple, Protocol, TypedDict

__all__ = [
    "STATE_VERSION",
    "ZIP64_LIMIT",
    "CurrentEntryState",
    "ResumableZipWriter",
    "WriterState",
]

ZIP64_LIMIT: Final = 0xFFFFFFFF
"""Largest value a 32-bit ZIP field can hold; the value itself means "see the zip64 field"."""
STATE_VERSION: Final = 1

_ENTRY_COUNT_LIMIT: Final = 0xFFFF
_MARKER32: Final = 0xFFFFFFFF
_MAX_U64: Final = 0xFFFFFFFFFFFFFFFF

_STORED: Final = 0
_DEFLATED: Final = 8
_FLAGS: Final = 0x0808  # bit 3: data descriptor, bit 11: UTF-8 name
_VERSION_DEFAULT: Final = 20
_VERSION_ZIP64: Final = 45
_MADE_BY: Final = (3 << 8) | _VERSION_ZIP64  # Unix, spec 4.5
_EXTERNAL_ATTR: Final = 0o100644 << 16  # regular file, rw-r--r--
_ZIP64_EXTRA_ID: Final = 0x0001

_SIG_LOCAL: Final = 0x04034B50
_SIG_DESCRIPTOR: Final = 0x08074B50
_SIG_CENTRAL: Final = 0x02014B50
_SIG_EOCD64: Final = 0x06064B50
_SIG_LOCATOR64: Final = 0x07064B50
_SIG_EOCD: Final = 0x06054B50

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_LOCAL_ZIP64_EXTRA: Final = struct.pack("<HHQQ", _ZIP64_EXTRA_ID, 16, 0, 0)
_DESCRIPTOR32 = struct.Struct("<IIII")
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self, mode: int = ..., /) -> bytes: ...


class CurrentEntryState(TypedDict):
    """The entry being written when the state was taken (its local header is already out)."""

    name: str
    method: int  # 0 stored, 8 deflated
    declared: int  # size given to start_entry
    crc: int  # CRC-32 of the uncompressed bytes so far
    size: int  # uncompressed bytes so far
    csize: int  # compressed bytes so far (== size when stored)
    header_offset: int
    zip64: bool


class WriterState(TypedDict):
    """JSON-serialisable checkpoint; valid right after the bytes returned with it."""

    version: int
    offset: int  # bytes of archive emitted so far
    mtime: list[int]  # [DOS date, DOS time]
    compresslevel: int
    zip64_limit: int
    finished: bool
    # finished entries: [name, method, crc, csize, size, header_offset, zip64]
    entries: list[list[str | int | bool]]
    current: CurrentEntryState | None


class _Entry(NamedTuple):
    name: str
    method: int
    crc: int
    csize: int
    size: int
    header_offset: int
    zip64: bool


class _Open:
    __slots__ = (
        "compressor",
        "crc",
        "csize",
        "declared",
        "dirty",
        "header_offset",
        "method",
        "name",
        "size",
        "zip64",
    )

    def __init__(
        self,
        name: str,
        method: int,
        declared: int,
        header_offset: int,
        zip64: bool,
        compressor: _Compressor | None,
    ) -> None:
        self.name = name
        self.method = method
        self.declared = declared
        self.header_offset = header_offset
        self.zip64 = zip64
        self.compressor = compressor
        self.crc = 0
        self.size = 0
        self.csize = 0
        self.dirty = False  # compressor holds input not yet flushed


def _dos_datetime(mtime: datetime | tuple[int, int] | None) -> tuple[int, int]:
    if mtime is None:
        return (1 << 5) | 1, 0  # 1980-01-01 00:00:00
    if isinstance(mtime, datetime):
        if not 1980 <= mtime.year <= 2107:
            raise ValueError(f"ZIP timestamps must be in 1980..2107, got {mtime.isoformat()}")
        date = ((mtime.year - 1980) << 9) | (mtime.month << 5) | mtime.day
        time = (mtime.hour << 11) | (mtime.minute << 5) | (mtime.second // 2)
        return date, time
    date, time = mtime
    for value in (date, time):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"DOS date/time must be two 16-bit integers, got {mtime!r}")
    return date, time


def _entry_zip64(size: int, deflate: bool, limit: int) -> bool:
    if deflate:
        return size > limit - (limit >> 4)
    return size >= limit


def _local_header_len(name_len: int, zip64: bool) -> int:
    return _LOCAL.size + name_len + (len(_LOCAL_ZIP64_EXTRA) if zip64 else 0)


def _descriptor_len(zip64: bool) -> int:
    return _DESCRIPTOR64.size if zip64 else _DESCRIPTOR32.size


def _central_zip64_fields(
    zip64: bool, size: int, csize: int, header_offset: int, limit: int
) -> tuple[bool, bool, bool]:
    """Which of (size, csize, header offset) go to the central record's zip64 extra field."""
    return zip64 or size >= limit, zip64 or csize >= limit, header_offset >= limit


def _central_record_len(name_len: int, fields: tuple[bool, bool, bool]) -> int:
    count = sum(fields)
    return _CENTRAL.size + name_len + (4 + 8 * count if count else 0)


def _needs_eocd64(count: int, cd_size: int, cd_offset: int, limit: int) -> bool:
    return count >= _ENTRY_COUNT_LIMIT or cd_size >= limit or cd_offset >= limit


def _end_records_len(count: int, cd_size: int, cd_offset: int, limit: int) -> int:
    zip64 = _needs_eocd64(count, cd_size, cd_offset, limit)
    return _EOCD.size + (_EOCD64.size + _LOCATOR64.size if zip64 else 0)


def _encode_name(name: str) -> bytes:
    if not name:
        raise ValueError("entry name must not be empty")
    encoded = name.encode("utf-8")
    if len(encoded) > 0xFFFF - 64:
        raise ValueError(f"entry name too long ({len(encoded)} bytes)")
    return encoded


def _check_size(size: int, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_U64:
        raise ValueError(f"{what} must be an integer in 0..2**64-1, got {size!r}")
    return size


class ResumableZipWriter:
    """Streaming ZIP writer; every method returns the bytes to append to the archive.

    ``mtime`` is the modification time of every entry (a ``datetime`` whose wall-clock fields
    are used as is, or a ``(dos_date, dos_time)`` pair; default 1980-01-01 00:00:00).
    ``compresslevel`` is the zlib level of DEFLATED entries. ``zip64_limit`` is the value from
    which sizes and offsets are written as zip64; keep the default outside of tests.
    """

    def __init__(
        self,
        *,
        mtime: datetime | tuple[int, int] | None = None,
        compresslevel: int = 6,
        zip64_limit: int = ZIP64_LIMIT,
    ) -> None:
        if isinstance(compresslevel, bool) or compresslevel not in range(-1, 10):
            raise ValueError(f"compresslevel must be in -1..9, got {compresslevel!r}")
        if isinstance(zip64_limit, bool) or not 0 <= zip64_limit <= ZIP64_LIMIT:
            raise ValueError(f"zip64_limit must be in 0..{ZIP64_LIMIT:#x}, got {zip64_limit!r}")
        self._dos_date, self._dos_time = _dos_datetime(mtime)
        self._level = compresslevel
        self._limit = zip64_limit
        self._offset = 0
        self._entries: list[_Entry] = []
        self._current: _Open | None = None
        self._finished = False

    # ------------------------------------------------------------------ state
    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> ResumableZipWriter:
        """Rebuild a writer from :meth:`checkpoint` state (also after a JSON round trip).

        The new writer continues right after the bytes that were returned with that state;
        anything the old writer emitted later must be discarded (truncate to ``state["offset"]``).
        Raises ``ValueError`` for a malformed state.
        """
        try:
            return cls._from_state(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid zip writer state: {exc}") from exc

    @classmethod
    def _from_state(cls, state: Mapping[str, object]) -> ResumableZipWriter:
        if state["version"] != STATE_VERSION:
            raise ValueError(f"unsupported version {state['version']!r}")
        mtime = state["mtime"]
        if not isinstance(mtime, list | tuple) or len(mtime) != 2:
            raise ValueError("mtime must be [dos_date, dos_time]")
        writer = cls(
            mtime=(_int(mtime[0], "mtime"), _int(mtime[1], "mtime")),
            compresslevel=_int(state["compresslevel"], "compresslevel", lo=-1),
            zip64_limit=_int(state["zip64_limit"], "zip64_limit"),
        )
        writer._offset = _int(state["offset"], "offset")
        writer._finished = _bool(state["finished"], "finished")
        entries = state["entries"]
        if not isinstance(entries, list | tuple):
            raise ValueError("entries must be a list")
        for item in entries:
            if not isinstance(item, list | tuple) or len(item) != 7:
                raise ValueError(f"bad entry {item!r}")
            name, method, crc, csize, size, header_offset, zip64 = item
            if not isinstance(name, str):
                raise ValueError(f"bad entry name {name!r}")
            writer._entries.append(
                _Entry(
                    name,
                    _method(method),
                    _int(crc, "crc", hi=0xFFFFFFFF),
                    _int(csize, "csize"),
                    _int(size, "size"),
                    _int(header_offset, "header_offset"),
                    _bool(zip64, "zip64"),
                )
            )
        current = state["current"]
        if current is not None:
            if not isinstance(current, Mapping) or writer._finished:
                raise ValueError("bad current entry")
            name = current["name"]
            if not isinstance(name, str):
                raise ValueError(f"bad entry name {name!r}")
            method = _method(current["method"])
            entry = _Open(
                name,
                method,
                _int(current["declared"], "declared"),
                _int(current["header_offset"], "header_offset"),
                _bool(current["zip64"], "zip64"),
                writer._new_compressor() if method == _DEFLATED else None,
            )
            entry.crc = _int(current["crc"], "crc", hi=0xFFFFFFFF)
            entry.size = _int(current["size"], "size", hi=entry.declared)
            entry.csize = _int(current["csize"], "csize")
            if method == _STORED and entry.csize != entry.size:
                raise ValueError("stored entry with csize != size")
            writer._current = entry
        return writer

    def checkpoint(self) -> tuple[bytes, WriterState]:
        """Return ``(bytes, state)``: emit the bytes, then the state is valid.

        Between entries the bytes are empty. In a DEFLATED entry the compressor is flushed with
        ``Z_FULL_FLUSH`` and replaced with a fresh one; the compressed size so far is in the state.
        """
        out = b""
        current = self._current
        if current is not None and current.compressor is not None and current.dirty:
            out = current.compressor.flush(zlib.Z_FULL_FLUSH)
            current.compressor = self._new_compressor()
            current.dirty = False
            current.csize += len(out)
            self._offset += len(out)
        return out, self._state()

    def _state(self) -> WriterState:
        current = self._current
        return {
            "version": STATE_VERSION,
            "offset": self._offset,
            "mtime": [self._dos_date, self._dos_time],
            "compresslevel": self._level,
            "zip64_limit": self._limit,
            "finished": self._finished,
            "entries": [list(entry) for entry in self._entries],
            "current": None
            if current is None
            else {
                "name": current.name,
                "method": current.method,
                "declared": current.declared,
                "crc": current.crc,
                "size": current.size,
                "csize": current.csize,
                "header_offset": current.header_offset,
                "zip64": current.zip64,
            },
        }

    # ------------------------------------------------------------------ properties
    @property
    def offset(self) -> int:
        """Bytes of archive returned so far (after :meth:`finish`: the archive size)."""
        return self._offset

    @property
    def in_entry(self) -> bool:
        """True between :meth:`start_entry` and :meth:`end_entry`."""
        return self._current is not None

    @property
    def declared_size(self) -> int | None:
        """The size given to :meth:`start_entry` for the open entry (None between entries)."""
        return None if self._current is None else self._current.declared

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` returned the end records."""
        return self._finished

    # ------------------------------------------------------------------ entries
    def start_entry(self, name: str, size: int, *, deflate: bool = False) -> bytes:
        """Begin an entry of ``size`` uncompressed bytes; returns its local header.

        The size must be known up front (it decides zip64) and is enforced by :meth:`write`
        and :meth:`end_entry`.
        """
        if self._finished:
            raise RuntimeError("archive already finished")
        if self._current is not None:
            raise RuntimeError(f"entry {self._current.name!r} is still open")
        encoded = _encode_name(name)
        size = _check_size(size, "size")
        zip64 = _entry_zip64(size, deflate, self._limit)
        method = _DEFLATED if deflate else _STORED
        header = _LOCAL.pack(
            _SIG_LOCAL,
            _VERSION_ZIP64 if zip64 else _VERSION_DEFAULT,
            _FLAGS,
            method,
            self._dos_time,
            self._dos_date,
            0,
            _MARKER32 if zip64 else 0,
            _MARKER32 if zip64 else 0,
            len(encoded),
            len(_LOCAL_ZIP64_EXTRA) if zip64 else 0,
        )
        header += encoded + (_LOCAL_ZIP64_EXTRA if zip64 else b"")
        compressor = self._new_compressor() if deflate else None
        self._current = _Open(name, method, size, self._offset, zip64, compressor)
        self._offset += len(header)
        return header

    def write(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add uncompressed ``data`` to the open entry; returns the bytes to emit.

        For a STORED entry that is ``data`` itself (no copy when it is ``bytes``). Raises
        ``ValueError``, leaving the writer unchanged, if the entry would exceed its declared size.
        """
        current = self._current
        if current is None:
            raise RuntimeError("write() outside of an entry")
        if not isinstance(data, bytes):
            data = bytes(data)
        size = current.size + len(data)
        if size > current.declared:
            raise ValueError(
                f"entry {current.name!r}: {size} bytes written, more than its declared size "
                f"{current.declared} (did the source change?)"
            )
        current.crc = zlib.crc32(data, current.crc)
        current.size = size
        if current.compressor is None:
            out = data
        else:
            out = current.compressor.compress(data)
            current.dirty = current.dirty or bool(data)
        current.csize += len(out)
        self._offset += len(out)
        return out

    def end_entry(self) -> bytes:
        """Close the open entry; returns the compressor's tail (deflate) and the data descriptor.

        Raises ``ValueError``, leaving the entry open, if fewer bytes than declared were written.
        """
        current = self._current
        if current is None:
            raise RuntimeError("end_entry() outside of an entry")
        if current.size != current.declared:
            raise ValueError(
                f"entry {current.name!r}: {current.size} bytes written, but its declared size "
                f"is {current.declared} (did the source change?)"
            )
        tail = b""
        csize = current.csize
        if current.compressor is not None:
            tail = current.compressor.flush(zlib.Z_FINISH)
            csize += len(tail)
        if current.zip64:
            descriptor = _DESCRIPTOR64.pack(_SIG_DESCRIPTOR, current.crc, csize, current.size)
        elif csize > _MARKER32:
            raise ValueError(
                f"entry {current.name!r}: compressed size {csize} does not fit without zip64"
            )
        else:
            descriptor = _DESCRIPTOR32.pack(_SIG_DESCRIPTOR, current.crc, csize, current.size)
        self._entries.append(
            _Entry(
                current.name,
                current.method,
                current.crc,
                csize,
                current.size,
                current.header_offset,
                current.zip64,
            )
        )
        self._current = None
        out = tail + descriptor
        self._offset += len(out)
        return out

    def finish(self, *, first: str | None = None) -> bytes:
        """Return the central directory and end records; the archive is then complete.

        The central directory lists the entries in the order they were written, except the
        entry named ``first``, listed first: readers (``unzip -l``, ``zipfile.namelist()``, the
        Windows and macOS archive tools) list entries in central-directory order, so an entry
        whose content is only known at the end (a manifest) is still shown first.
        """
        if self._current is not None:
            raise RuntimeError(f"entry {self._current.name!r} is still open")
        if self._finished:
            raise RuntimeError("archive already finished")
        limit = self._limit
        cd_offset = self._offset
        entries = sorted(self._entries, key=lambda entry: entry.name != first)
        parts = [self._central_record(entry) for entry in entries]
        cd_size = sum(map(len, parts))
        count = len(self._entries)
        if _needs_eocd64(count, cd_size, cd_offset, limit):
            eocd64_offset = cd_offset + cd_size
            parts.append(
                _EOCD64.pack(
                    _SIG_EOCD64,
                    _EOCD64.size - 12,
                    _MADE_BY,
                    _VERSION_ZIP64,
                    0,
                    0,
                    count,
                    count,
                    cd_size,
                    cd_offset,
                )
            )
            parts.append(_LOCATOR64.pack(_SIG_LOCATOR64, 0, eocd64_offset, 1))
        short_count = 0xFFFF if count >= _ENTRY_COUNT_LIMIT else count
        parts.append(
            _EOCD.pack(
                _SIG_EOCD,
                0,
                0,
                short_count,
                short_count,
                _MARKER32 if cd_size >= limit else cd_size,
                _MARKER32 if cd_offset >= limit else cd_offset,
                0,
            )
        )
        out = b"".join(parts)
        self._finished = True
        self._offset += len(out)
        return out

    def _central_record(self, entry: _Entry) -> bytes:
        encoded = entry.name.encode("utf-8")
        fields = _central_zip64_fields(
            entry.zip64, entry.size, entry.csize, entry.header_offset, self._limit
        )
        candidates = (entry.size, entry.csize, entry.header_offset)
        values = [value for value, big in zip(candidates, fields, strict=True) if big]
        extra = b""
        if values:
            extra = struct.pack(f"<HH{len(values)}Q", _ZIP64_EXTRA_ID, 8 * len(values), *values)
        header = _CENTRAL.pack(
            _SIG_CENTRAL,
            _MADE_BY,
            _VERSION_ZIP64 if values or entry.zip64 else _VERSION_DEFAULT,
            _FLAGS,
            entry.method,
            self._dos_time,
            self._dos_date,
            entry.crc,
            _MARKER32 if fields[1] else entry.csize,
            _MARKER32 if fields[0] else entry.size,
            len(encoded),
            len(extra),
            0,
            0,
            0,
            _EXTERNAL_ATTR,
            _MARKER32 if fields[2] else entry.header_offset,
        )
        return header + encoded + extra

    def _new_compressor(self) -> _Compressor:
        return zlib.compressobj(self._level, zlib.DEFLATED, -15)

    # ------------------------------------------------------------------ sizing
    @staticmethod
    def stored_archive_size(
        entries: Iterable[tuple[str, int]], zip64_limit: int = ZIP64_LIMIT
    ) -> int:
        """Exact size of the archive this writer produces for STORED entries (name, size)."""
        offset = 0
        cd_size = 0
        count = 0
        for name, size in entries:
            name_len = len(_encode_name(name))
            size = _check_size(size, "size")
            zip64 = _entry_zip64(size, False, zip64_limit)
            fields = _central_zip64_fields(zip64, size, size, offset, zip64_limit)
            cd_size += _central_record_len(name_len, fields)
            offset += _local_header_len(name_len, zip64) + size + _descriptor_len(zip64)
            count += 1
        return offset + cd_size + _end_records_len(count, cd_size, offset, zip64_limit)


def _int(value: object, what: str, *, lo: int = 0, hi: int = _MAX_U64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be a boolean, got {value!r}")
    return value


def _method(value: object) -> int:
    method = _int(value, "method")
    if method not in (_STORED, _DEFLATED):
        raise ValueError(f"method must be 0 (stored) or 8 (deflated), got {value!r}")
    return method
