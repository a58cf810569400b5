import pytest

from insignia._bytecache import ByteLru


def test_bounded_by_bytes_least_recently_used_first() -> None:
    cache: ByteLru[str, str] = ByteLru(100)
    for key in "abcd":
        cache.put(key, key * 30, 30)
    assert cache.get("a") is None and cache.bytes == 90 and len(cache) == 3
    assert cache.get("b") == "b" * 30  # now the most recent
    cache.put("e", "e", 30)
    assert cache.get("c") is None and cache.get("b") is not None
    assert cache.bytes <= 100


def test_oversize_items_are_not_kept_and_replacing_recharges() -> None:
    cache: ByteLru[str, str] = ByteLru(100, max_item_bytes=40)
    cache.put("big", "x", 41)
    assert cache.get("big") is None and cache.bytes == 0
    cache.put("k", "v1", 40)
    cache.put("k", "v2", 10)
    assert cache.get("k") == "v2" and cache.bytes == 10
    assert cache.pop("k") == "v2" and cache.bytes == 0


def test_get_or_make_keeps_values_but_not_errors() -> None:
    cache: ByteLru[str, int] = ByteLru(100)
    calls: list[str] = []

    def make(key: str) -> int:
        calls.append(key)
        if key == "bad":
            raise ValueError(key)
        return len(key)

    assert cache.get_or_make("abc", make, 10) == 3
    assert cache.get_or_make("abc", make, 10) == 3
    for _ in range(2):
        with pytest.raises(ValueError):
            cache.get_or_make("bad", make, 10)
    assert calls == ["abc", "bad", "bad"]
