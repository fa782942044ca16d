"""Token buckets in Redis, so every API process shares one limit per source.

One Lua script per check keeps take-a-token (and count-a-failure) atomic and reads Redis's own
clock, so processes on hosts whose clocks differ share one bucket and one failure window
correctly; keys expire on their own.
"""

from __future__ import annotations

import uuid

import redis

from api.ingress.limits import Decision

_TAKE = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', key, 't', 's')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', key, 't', tostring(tokens), 's', tostring(now))
redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
return {ok, tostring(tokens)}
"""

_FAIL = """
local key = KEYS[1]
local window = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
redis.call('ZADD', key, now, ARGV[2])
redis.call('PEXPIRE', key, math.ceil(window * 1000))
return redis.call('ZCARD', key)
"""


class RedisLimiter:
    def __init__(self, url: str, prefix: str = "dealflow:rl:") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.prefix = prefix
        self._take = self.client.register_script(_TAKE)
        self._fail = self.client.register_script(_FAIL)

    def take(self, key: str, rate: float, burst: int) -> Decision:
        ok, tokens = self._take(keys=[self.prefix + key], args=[rate, burst])
        if int(ok):
            return Decision(True)
        return Decision(False, retry_after=(1.0 - float(tokens)) / rate)

    def auth_failure(self, key: str, limit: int, window_s: float) -> bool:
        # The member only has to be unique across every process: the score is Redis's time.
        count = self._fail(keys=[self.prefix + key], args=[window_s, uuid.uuid4().hex])
        return int(count) >= limit
