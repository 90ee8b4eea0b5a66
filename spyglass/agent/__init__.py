"""The privileged agent: capture → engine → store, served to the GUI and CLI over the API."""

from spyglass.agent.server import AgentServer, AgentServerError, Backend, StoreBackend

__all__ = ["AgentServer", "AgentServerError", "Backend", "StoreBackend"]
