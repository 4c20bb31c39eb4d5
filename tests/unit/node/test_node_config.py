"""node.json parsing, --listen parsing, the throttle."""

import json

import pytest

from onionpost.node.config import ConfigError, NodeConfig, Throttle, parse_listen
from onionpost.node.throttle import TokenBucket


def test_round_trip():
    config = NodeConfig(host="127.0.0.2", port=4000, access_keys=("a",), quota=5, ttl=60, unsecured_limit=1, throttle=Throttle(10, 20))
    assert NodeConfig.loads(config.dumps()) == config
    assert NodeConfig.loads(json.dumps({"listen": {"host": "::1", "port": 1}})) == NodeConfig(host="::1", port=1)


@pytest.mark.parametrize(
    "data",
    [
        "[]",
        "{}",
        '{"listen": {"host": "127.0.0.1"}}',
        '{"listen": {"host": "8.8.8.8", "port": 1}}',
        '{"listen": {"host": "127.0.0.1", "port": 0}}',
        '{"listen": {"host": "127.0.0.1", "port": 1}, "quota": 0}',
        '{"listen": {"host": "127.0.0.1", "port": 1}, "quota": true}',
        '{"listen": {"host": "127.0.0.1", "port": 1}, "access_keys": [""]}',
        '{"listen": {"host": "127.0.0.1", "port": 1}, "throttle": {"rate": -1}}',
        '{"listen": {"host": "127.0.0.1", "port": 1}, "quotas": 5}',
        "not json",
    ],
)
def test_bad_configs(data):
    with pytest.raises(ConfigError):
        NodeConfig.loads(data)


def test_parse_listen():
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen("127.1.2.3") == ("127.1.2.3", 0)
    assert parse_listen("") == ("127.0.0.1", 0)
    for bad in ("0.0.0.0:1", "localhost:1", "x.onion:1", "127.0.0.1:70000", "127.0.0.1:abc", "[::1"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1
    assert bucket.take() and not bucket.take()
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 3
