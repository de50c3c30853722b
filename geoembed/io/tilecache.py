"""A process-wide cache of decoded raster blocks, shared by all threads.

GDAL's block cache belongs to one dataset handle, and each thread needs its own handle, so two
threads sampling neighbouring chunks would each decompress the blocks on their border. This cache
holds decoded blocks (native dtype, plus the validity mask where one is read) keyed by the file's
identity, so each block is decompressed once per process while it stays in the cache. A block
being decoded by one thread is waited for, not decoded again, by the others.

Size: ``GEOEMBED_TILE_CACHE_MB`` (default 128 MB), least recently used out first. Arrays handed
out stay valid after eviction (numpy keeps them alive while in use).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from geoembed.errors import ConfigError

__all__ = ["Block", "TileCache", "tile_cache"]


@dataclass(frozen=True)
class Block:
    """A decoded block: ``data`` (bands, h, w) native dtype; ``mask`` (bands, h, w) uint8 or None;
    ``clean`` when it holds no invalid value (no NaN, nodata or masked pixel)."""

    data: np.ndarray
    mask: np.ndarray | None
    clean: bool = False

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.mask is None else self.mask.nbytes)


class TileCache:
    """Thread-safe LRU of decoded blocks with a byte budget; counts decodes and hits."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, Block] = OrderedDict()
        self._loading: dict[Hashable, threading.Event] = {}
        self._bytes = 0
        self.decodes = 0
        self.hits = 0

    def get(self, key: Hashable, load: Callable[[], Block], wait: bool = True) -> Block | None:
        """The block for ``key``, calling ``load()`` (outside the lock) only if no thread has it.

        With ``wait=False``, None when another thread is loading it right now (so that the caller
        can load its other blocks meanwhile and ask again later)."""
        while True:
            with self._lock:
                blk = self._items.get(key)
                if blk is not None:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return blk
                ev = self._loading.get(key)
                if ev is None:
                    ev = self._loading[key] = threading.Event()
                    break
            if not wait:
                return None
            ev.wait()  # another thread is decoding it; then look again (it may have failed)
        try:
            blk = load()
        except BaseException:
            with self._lock:
                del self._loading[key]
            ev.set()
            raise
        with self._lock:
            del self._loading[key]
            self.decodes += 1
            if blk.nbytes <= self.max_bytes:
                self._items[key] = blk
                self._bytes += blk.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        ev.set()
        return blk

    def clear(self) -> None:
        """Drop every cached block (and reset the counters)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.decodes = 0
            self.hits = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


_SHARED: TileCache | None = None
_SHARED_LOCK = threading.Lock()


def tile_cache() -> TileCache:
    """The process-wide cache, sized by ``GEOEMBED_TILE_CACHE_MB`` when first used."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            raw = os.environ.get("GEOEMBED_TILE_CACHE_MB", "128")
            try:
                mb = float(raw)
            except ValueError:
                raise ConfigError(
                    f"environment variable GEOEMBED_TILE_CACHE_MB must be a number of megabytes, not {raw!r}"
                ) from None
            _SHARED = TileCache(int(max(mb, 0.0) * 2**20))
        return _SHARED
