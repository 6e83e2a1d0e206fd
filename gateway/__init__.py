"""The gateway: OpenAI-compatible HTTP in front of Kafka."""
