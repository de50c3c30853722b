"""A process-wide store of decoded raster blocks, shared by all threads, read in place.

GDAL's block cache belongs to one dataset handle, and each thread needs its own handle, so two
threads sampling neighbouring chunks would each decompress the blocks on their border. Here the
decoded blocks of a source live in one array per source, a :class:`BlockArena` (slot, band, y, x
in the native dtype, plus the validity mask where one is read), keyed by the file's identity: each
block is decompressed once per process while it stays, straight into its slot, and the chip kernel
reads the arena itself (no copy). A thread *pins* the slots it samples from; only unpinned slots
are reused, least recently used first. A block being decoded by one thread is waited for, not
decoded again, by the others.

Size: ``GEOEMBED_TILE_CACHE_MB`` (default 128 MB) per tiled source, allocated lazily. A request
that does not fit next to the other threads' pinned blocks gets None and reads its blocks itself.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from geoembed.errors import ConfigError

__all__ = ["BlockArena", "TileCache", "tile_cache"]

Loader = Callable[[Hashable, int], bool]


class BlockArena:
    """Slots of equal decoded blocks of one source: ``data`` (capacity, bands, bh, bw), ``mask``
    (capacity or 0, bands, bh, bw) uint8 (0 = no data), ``clean`` (capacity,) when a slot holds no
    invalid value. Edge blocks fill the top-left part of their slot."""

    def __init__(self, cache: TileCache, dtype, bands: int, block: tuple[int, int], with_mask: bool,
                 capacity: int) -> None:
        self._cache = cache
        self.data = np.empty((capacity, bands, *block), dtype=dtype)
        self.mask = np.empty((capacity if with_mask else 0, bands, *block) if with_mask else (0, 1, 1, 1),
                             dtype=np.uint8)
        self.clean = np.zeros(capacity, dtype=np.bool_)
        self.capacity = capacity
        self._slot_of: dict[Hashable, int] = {}
        self._key_of: list[Hashable | None] = [None] * capacity
        self._pins = [0] * capacity
        self._lru: OrderedDict[int, None] = OrderedDict()  # loaded, unpinned slots
        self._free = list(range(capacity - 1, -1, -1))
        self._loading: dict[Hashable, threading.Event] = {}

    # all bookkeeping below runs under the cache's lock
    def _pin(self, slot: int) -> None:
        if self._pins[slot] == 0:
            self._lru.pop(slot, None)
        self._pins[slot] += 1

    def _reserve(self, key: Hashable) -> int | None:
        if self._free:
            slot = self._free.pop()
        elif self._lru:
            slot, _ = self._lru.popitem(last=False)
            del self._slot_of[self._key_of[slot]]
        else:
            return None
        self._key_of[slot] = key
        self._pins[slot] = 1
        self._loading[key] = threading.Event()
        return slot

    def release(self, slots: Sequence[int]) -> None:
        """Unpin slots taken by :meth:`acquire`."""
        with self._cache._lock:
            self._release(slots)

    def _release(self, slots: Sequence[int]) -> None:
        for slot in slots:
            self._pins[slot] -= 1
            if self._pins[slot] == 0 and self._key_of[slot] is not None:
                self._lru[slot] = None

    def acquire(self, keys: Sequence[Hashable], load: Loader) -> np.ndarray | None:
        """Pin the slots holding ``keys`` (in order), decoding missing ones with ``load(key, slot)``
        (which fills the slot and returns whether it is clean). None, with nothing pinned, when the
        unpinned slots cannot hold them; release the slots when done sampling."""
        lock = self._cache._lock
        slots = np.full(len(keys), -1, dtype=np.int64)
        mine: list[tuple[int, Hashable, int]] = []
        waiting: list[int] = []
        with lock:
            for k, key in enumerate(keys):
                slot = self._slot_of.get(key)
                if slot is not None:
                    self._pin(slot)
                    slots[k] = slot
                    self._cache.hits += 1
                elif key in self._loading:
                    waiting.append(k)
                else:
                    slot = self._reserve(key)
                    if slot is None:
                        self._undo(slots, mine)
                        return None
                    slots[k] = slot
                    mine.append((k, key, slot))
        self._load(mine, load, slots)
        for k in waiting:  # decoded by another thread meanwhile (or dropped: then load it here)
            key = keys[k]
            while slots[k] < 0:
                with lock:
                    slot = self._slot_of.get(key)
                    ev = self._loading.get(key)
                    if slot is not None:
                        self._pin(slot)
                        slots[k] = slot
                        self._cache.hits += 1
                        break
                    if ev is None:
                        slot = self._reserve(key)
                        if slot is None:
                            self._undo(slots, [])
                            return None
                        slots[k] = slot
                if ev is not None:
                    ev.wait()
                else:
                    self._load([(k, key, int(slots[k]))], load, slots)
        return slots

    def _load(self, todo: list[tuple[int, Hashable, int]], load: Loader, slots: np.ndarray) -> None:
        lock = self._cache._lock
        for n, (_, key, slot) in enumerate(todo):
            try:
                clean = load(key, slot)
            except BaseException:
                with lock:
                    for _, key2, slot2 in todo[n:]:  # give back this and the not yet loaded slots
                        self._key_of[slot2] = None
                        self._pins[slot2] = 0
                        self._free.append(slot2)
                        self._loading.pop(key2).set()
                    loaded = [s for s in slots.tolist() if s >= 0 and s not in {t[2] for t in todo[n:]}]
                    self._release(loaded)
                raise
            with lock:
                self.clean[slot] = clean
                self._slot_of[key] = slot
                self._loading.pop(key).set()
                self._cache.decodes += 1

    def _undo(self, slots: np.ndarray, mine: list[tuple[int, Hashable, int]]) -> None:
        reserved = {slot for _, _, slot in mine}
        for _, key, slot in mine:
            self._key_of[slot] = None
            self._pins[slot] = 0
            self._free.append(slot)
            self._loading.pop(key).set()
        self._release([s for s in slots.tolist() if s >= 0 and s not in reserved])
        slots[:] = -1


class TileCache:
    """The arenas of all tiled sources, with counters of decodes and hits (for tests and benchmarks)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._arenas: dict[Hashable, BlockArena] = {}
        self.decodes = 0
        self.hits = 0

    def arena(self, source_key: Hashable, dtype, bands: int, block: tuple[int, int],
              with_mask: bool) -> BlockArena:
        """The arena of one source (created on first use, sized by the byte budget)."""
        with self._lock:
            arena = self._arenas.get(source_key)
            if arena is None:
                slot_bytes = np.dtype(dtype).itemsize * bands * block[0] * block[1] * (2 if with_mask else 1)
                capacity = max(4, self.max_bytes // max(slot_bytes, 1))
                arena = self._arenas[source_key] = BlockArena(self, dtype, bands, block, with_mask, capacity)
            return arena

    def clear(self) -> None:
        """Drop every arena (call when no chunk is running) and reset the counters."""
        with self._lock:
            self._arenas.clear()
            self.decodes = 0
            self.hits = 0


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
