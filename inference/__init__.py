"""The inference worker: a vLLM engine that consumes requests from Kafka and streams tokens back."""
