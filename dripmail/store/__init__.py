"""Subscribers and delivery state in a database: SQLite by default, PostgreSQL for many workers."""
