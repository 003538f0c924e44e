"""Shared pytest configuration."""

pytest_plugins = ["kafka_services"]  # the `services` fixture: a real broker and Redis


def pytest_configure(config):
    """Register markers used across the test suite."""
    config.addinivalue_line(
        "markers", "network: needs the network or a package index (fetches real data)")
    config.addinivalue_line(
        "markers", "integration: starts a real Kafka-protocol broker and Redis server")
