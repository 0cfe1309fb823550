"""Automated pediatric bone-age assessment from hand radiographs (research use)."""

__version__ = "0.1.0"
