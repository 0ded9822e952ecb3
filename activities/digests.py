"""SHA-256 of each file as it streams into the archive, resumable in another process.

`hashlib`'s state cannot be saved, so a digest cut by a lost worker in the middle of a large
file could only be finished by reading that file's packaged bytes again. `resumablesha256`
(B-Con's SHA-256 in C) exposes its state: 112 bytes (the partial block, its length, the bit
count, the eight hash words), kept base64-encoded in the checkpoint beside the zip writer's
state and restored by the attempt that resumes. The state is read as the extension lays it out
on the worker's platform, which is checked on restore: a state whose byte count is not the
file's offset is refused, and the file's digest is then left unknown rather than wrong.
"""

from __future__ import annotations

import base64
import binascii

from resumablesha256 import sha256

__all__ = ["FileDigest"]

_STATE_SIZE = 112
# Offsets in the state: buffered bytes (uint32) and bits already compressed (uint64).
_BUFFERED = slice(64, 68)
_BITS = slice(72, 80)


class FileDigest:
    """The running SHA-256 of one file; `state()` and `restore()` carry it across attempts."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = sha256()

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return str(self._hash.hexdigest())

    def state(self) -> str:
        return base64.b64encode(self._hash.__getstate__()).decode()

    @classmethod
    def restore(cls, state: str | None, offset: int) -> FileDigest | None:
        """The digest of a file's first `offset` bytes from `state`; None if it is not one."""
        if state is None:
            return None if offset else cls()
        try:
            raw = base64.b64decode(state, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _STATE_SIZE:
            return None
        buffered = int.from_bytes(raw[_BUFFERED], "little")
        bits = int.from_bytes(raw[_BITS], "little")
        if buffered >= 64 or bits % 512 or bits // 8 + buffered != offset:
            return None
        digest = cls()
        digest._hash.__setstate__(raw)
        return digest
