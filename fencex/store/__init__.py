"""Storage adapters. ``base`` holds the key layout and the interface; ``redis`` the Redis backend."""
