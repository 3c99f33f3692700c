"""The worker side of tracker: everything that touches a model (registry, backends, scoring)."""
