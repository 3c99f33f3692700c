"""Shared test helpers: queue fixtures, SQL fixtures, dataset fixtures and synthetic data dirs."""
