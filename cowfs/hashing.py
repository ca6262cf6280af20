"""Content hashes: xxh3-128 of file bytes (streamed) and of symlink targets."""

from __future__ import annotations

import os

import xxhash

from cowfs.durable import chunks_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def hash_fd(fd: int, also: Any = None) -> str:
    """The hash of ``fd``'s bytes; ``also`` (a hashlib object), when given, is
    fed the same bytes in the same pass."""
    h = xxhash.xxh3_128()
    for chunk in chunks_of(fd):
        h.update(chunk)
        if also is not None:
            also.update(chunk)
    return h.hexdigest()


def hash_file(path: str | os.PathLike[str]) -> str:
    """Hash a regular file's bytes without following a final symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)
