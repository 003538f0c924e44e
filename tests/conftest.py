"""Shared pytest configuration."""


def pytest_configure(config):
    """Register markers used across the test suite."""
    config.addinivalue_line(
        "markers", "network: needs the network or a package index (fetches real data)")
