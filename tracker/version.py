"""The tracker's version (a leaf: core modules read it here, not from the package, whose
``__init__`` loads the Python API lazily)."""
from __future__ import annotations

__version__ = "0.1.0"
