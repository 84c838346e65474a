"""Storage adapters. ``base`` holds the key layout and the interface; ``redis`` the Redis backend
(one ``RedisStore``, assembled from ``connection``, ``feed``, ``fences``, ``devices``, ``tenants``,
``history`` and ``tracks``; its Lua scripts in ``scripts``)."""
