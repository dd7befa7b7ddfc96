"""Routing: model resolution, admission control, backend clients and health checks."""
