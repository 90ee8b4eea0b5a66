"""Fixtures: a real store, a real server on a real Unix socket (see tests/agent/helpers.py)."""

from tests.agent.helpers import backend, db_path, raw, server, short_dir, sock_path

__all__ = ["backend", "db_path", "raw", "server", "short_dir", "sock_path"]
