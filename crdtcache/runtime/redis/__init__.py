"""Redis mode: the same cache API on a shared Redis.

:mod:`._runtime` is the entry point (``RedisRuntime``) and maps where each concept
lives; :mod:`._protocol` holds the theory of operation.
"""
