"""SHA-256 of each file as it streams into the archive, resumable in another process.

`hashlib`'s state cannot be saved, so a digest cut by a lost worker in the middle of a large
file could only be finished by reading that file's packaged bytes again. Two implementations
whose state can be saved, kept base64-encoded in the checkpoint beside the zip writer's state:

* OpenSSL's `SHA256_Init`/`SHA256_Update`/`SHA256_Final` on a `SHA256_CTX`, the public
  112-byte structure of `<openssl/sha.h>` (eight hash words, the bit count, the partial block,
  its length), called through the libcrypto that Python's own `hashlib` is linked with: the
  same speed as `hashlib` (SHA extensions where the CPU has them), and the interpreter lock is
  released during each call;
* `resumablesha256` (B-Con's SHA-256 in C, its state exposed for pickling), where that
  libcrypto does not export those functions: correct, but about a fifth of the speed, with the
  interpreter lock held.

A state names its implementation and is checked on restore (its byte count must be the file's
offset); one this worker cannot continue leaves that file's digest unknown rather than wrong.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
from typing import Any

__all__ = ["FileDigest", "implementation"]

_CTX_SIZE = 112
_DIGEST_SIZE = 32


def _openssl() -> tuple[Any, Any, Any] | None:
    """`SHA256_Init`, `SHA256_Update`, `SHA256_Final` of the libcrypto `hashlib` uses, if any."""
    try:
        import _hashlib  # only its path is needed

        lib = ctypes.CDLL(_hashlib.__file__)
        init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
    except (ImportError, OSError, AttributeError):
        return None
    init.argtypes, init.restype = [ctypes.c_void_p], ctypes.c_int
    update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    update.restype = ctypes.c_int
    final.argtypes, final.restype = [ctypes.c_char_p, ctypes.c_void_p], ctypes.c_int
    return init, update, final


_OPENSSL = _openssl()


def implementation() -> str:
    """Which implementation this worker computes digests with: `openssl` or `bcon`."""
    return "openssl" if _OPENSSL is not None else "bcon"


class _OpenSSLState:
    __slots__ = ("ctx",)

    def __init__(self, raw: bytes | None = None) -> None:
        assert _OPENSSL is not None
        self.ctx = ctypes.create_string_buffer(_CTX_SIZE)
        if raw is None:
            _OPENSSL[0](self.ctx)
        else:
            ctypes.memmove(self.ctx, raw, _CTX_SIZE)

    def update(self, data: bytes) -> None:
        assert _OPENSSL is not None
        _OPENSSL[1](self.ctx, bytes(data) if not isinstance(data, bytes) else data, len(data))

    def hexdigest(self) -> str:
        assert _OPENSSL is not None
        copy = ctypes.create_string_buffer(self.ctx.raw, _CTX_SIZE)  # Final wipes its context
        out = ctypes.create_string_buffer(_DIGEST_SIZE)
        _OPENSSL[2](out, copy)
        return out.raw.hex()

    def raw(self) -> bytes:
        return bytes(self.ctx.raw)

    @staticmethod
    def valid(raw: bytes, offset: int) -> bool:
        # h[8], Nl, Nh (bits of everything given, the partial block included), data[16], num,
        # md_len: 32-bit words in the platform's order (little-endian on the workers we build).
        bits = int.from_bytes(raw[32:36], "little") | int.from_bytes(raw[36:40], "little") << 32
        num = int.from_bytes(raw[104:108], "little")
        md_len = int.from_bytes(raw[108:112], "little")
        return md_len == _DIGEST_SIZE and bits == 8 * offset and num == offset % 64


class _BConState:
    __slots__ = ("hash",)

    def __init__(self, raw: bytes | None = None) -> None:
        from resumablesha256 import sha256  # loaded only where OpenSSL's is missing

        self.hash = sha256()
        if raw is not None:
            self.hash.__setstate__(raw)

    def update(self, data: bytes) -> None:
        self.hash.update(data)

    def hexdigest(self) -> str:
        return str(self.hash.hexdigest())

    def raw(self) -> bytes:
        return bytes(self.hash.__getstate__())

    @staticmethod
    def valid(raw: bytes, offset: int) -> bool:
        # data[64], datalen (uint32, then padding), bitlen (uint64, whole blocks), state[8].
        buffered = int.from_bytes(raw[64:68], "little")
        bits = int.from_bytes(raw[72:80], "little")
        return buffered < 64 and bits % 512 == 0 and bits // 8 + buffered == offset


_KINDS: dict[str, type[_OpenSSLState] | type[_BConState]] = {
    "openssl": _OpenSSLState,
    "bcon": _BConState,
}


class FileDigest:
    """The running SHA-256 of one file; `state()` and `restore()` carry it across attempts."""

    __slots__ = ("_kind", "_state")

    def __init__(self) -> None:
        self._kind = implementation()
        self._state = _KINDS[self._kind]()

    def update(self, data: bytes) -> None:
        self._state.update(data)

    def hexdigest(self) -> str:
        return self._state.hexdigest()

    def state(self) -> str:
        return f"{self._kind}:{base64.b64encode(self._state.raw()).decode()}"

    @classmethod
    def restore(cls, state: str | None, offset: int) -> FileDigest | None:
        """The digest of a file's first `offset` bytes from `state`; None if this worker cannot
        continue it (none kept, another implementation's, or not a state of that offset)."""
        if state is None:
            return None if offset else cls()
        kind, _, encoded = state.partition(":")
        if kind != implementation():
            return None
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _CTX_SIZE or not _KINDS[kind].valid(raw, offset):
            return None
        digest = cls.__new__(cls)
        digest._kind, digest._state = kind, _KINDS[kind](raw)
        return digest
