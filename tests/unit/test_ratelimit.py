import pytest

from insignia.daemon.ratelimit import RateLimiter, peer_ip


def test_bucket_refills_at_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=2.0)
    assert limiter.try_acquire("1.2.3.4", 0.0)
    assert limiter.try_acquire("1.2.3.4", 0.0)
    assert not limiter.try_acquire("1.2.3.4", 0.0)
    assert limiter.retry_after("1.2.3.4") == pytest.approx(0.5)
    assert not limiter.try_acquire("1.2.3.4", 0.4)
    assert limiter.try_acquire("1.2.3.4", 0.5)
    assert limiter.try_acquire("5.6.7.8", 0.5)  # per key


def test_batch_cost_and_default_burst() -> None:
    limiter = RateLimiter(rate=500.0)
    assert limiter.try_acquire("ip", 0.0, cost=500)
    assert not limiter.try_acquire("ip", 0.0, cost=1)
    assert limiter.try_acquire("ip", 1.0, cost=500)
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate=0)


def test_table_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, max_keys=10)
    for i in range(100):
        limiter.try_acquire(f"10.0.0.{i}", float(i))
    assert len(limiter._buckets) <= 10


@pytest.mark.parametrize(
    ("peer", "ip"),
    [("ipv4:127.0.0.1:5555", "127.0.0.1"), ("ipv6:[::1]:5555", "::1"), ("unix:/x", "unix:/x")],
)
def test_peer_ip(peer: str, ip: str) -> None:
    assert peer_ip(peer) == ip
