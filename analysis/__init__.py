"""Statistics, reports, figures and MLflow logging for tracker experiments."""
from __future__ import annotations
