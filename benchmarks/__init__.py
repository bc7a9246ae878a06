"""Weir's benchmarks: reproducible measurements against a real Kafka broker."""
