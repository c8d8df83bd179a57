"""The output cache: measuring, per-device budgets, LRU order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from graph_runtime.cache import CacheEntry, OutputCache, budgets_from_env, measure, parse_bytes


class FakeTensor:
    """Just enough of a tensor for measuring: nbytes and a device with a type."""

    class _Device:
        def __init__(self, kind: str) -> None:
            self.type = kind

    def __init__(self, nbytes: int, device: str = "cpu") -> None:
        self.nbytes = nbytes
        self.device = self._Device(device)


def entry(nbytes: int, device: str = "cpu") -> CacheEntry:
    return CacheEntry({"x": FakeTensor(nbytes, device)})


def test_measure_tensors_modules_and_containers() -> None:
    torch = pytest.importorskip("torch")
    t = torch.zeros(10, 10)  # 400 bytes
    lin = torch.nn.Linear(4, 3)  # 12 weights + 3 biases = 60 bytes
    assert measure(t) == {"cpu": 400}
    assert measure(lin) == {"cpu": 60}

    @dataclass
    class Bundle:
        a: object
        b: object

    assert measure(Bundle(t, [t, {"k": lin}])) == {"cpu": 460}  # shared tensor counted once
    assert measure({"g": FakeTensor(1000, "cuda")})["cuda"] == 1000


def test_measure_own_nbytes_hook() -> None:
    class Blob:
        def __nbytes__(self) -> dict[str, int]:
            return {"cuda": 5, "cpu": 7}

    assert measure(Blob()) == {"cuda": 5, "cpu": 7}


def test_lru_eviction_per_device() -> None:
    cache = OutputCache({"cpu": 10_000, "cuda": 1000})
    cache.put("a", entry(400, "cuda"))
    cache.put("b", entry(400, "cuda"))
    cache.put("c", entry(5000, "cpu"))
    assert cache.get("a") is not None  # a is now more recent than b
    cache.put("d", entry(400, "cuda"))
    assert "b" not in cache and {"a", "c", "d"} <= set(cache.keys())
    assert cache.used()["cuda"] == 800 and cache.evictions == 1


def test_entry_larger_than_budget_is_not_kept() -> None:
    cache = OutputCache({"cpu": 1000})
    cache.put("small", entry(100))
    assert cache.put("huge", entry(5000)) is False
    assert "huge" not in cache and "small" in cache


def test_free_by_device_and_stats() -> None:
    cache = OutputCache({"cpu": None, "cuda": None})
    cache.put("g", entry(10, "cuda"))
    cache.put("c", entry(10, "cpu"))
    assert cache.free("cuda") == 1 and cache.keys() == ["c"]
    cache.get("c")
    cache.get("zzz")
    stats = cache.stats()
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 1
    cache.clear()
    assert len(cache) == 0 and cache.used() == {}


def test_budgets_from_env_and_parse_bytes() -> None:
    assert parse_bytes("1G") == 2**30 and parse_bytes("512m") == 512 * 2**20
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("1000") == 1000
    budgets = budgets_from_env({"NOODLE_CACHE_CPU_BYTES": "2G",
                                "NOODLE_CACHE_CUDA_BYTES": "100"})
    assert budgets["cpu"] == 2**31 and budgets["cuda"] == 100
