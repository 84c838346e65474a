"""Storage adapters. ``base`` holds the key layout and the interface; ``redis`` the Redis backend
(one ``RedisStore``, assembled from ``connection``, ``feed``, ``fences``, ``devices``, ``save``,
``tenants``, ``history``, ``tracks`` and ``grazing``; its Lua scripts in ``scripts``); ``migrate``
copies a store of the untagged key layout to today's (``docs/design/redis-cluster.md``)."""
