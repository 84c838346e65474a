"""The stream runtime: the worker loop that ties the Kafka and store adapters to the core."""
