"""dripmail: an email course and a newsletter run from files in a git repo."""

__version__ = "0.1.0"
