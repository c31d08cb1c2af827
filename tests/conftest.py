"""Shared fixtures: real objects only."""
