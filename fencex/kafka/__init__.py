"""Kafka adapters: topic admin (confluent-kafka), the batch consumer and the event producer (aiokafka)."""
