"""The agent API: versioned JSON lines over a Unix socket (protocol and blocking client)."""

from spyglass.api.client import (
    AgentClient,
    AgentError,
    AgentTimeout,
    AgentUnavailable,
    Subscription,
)
from spyglass.api.convert import WireUpload
from spyglass.api.protocol import DEFAULT_SOCKET_PATH, PROTOCOL_VERSION

__all__ = [
    "DEFAULT_SOCKET_PATH",
    "PROTOCOL_VERSION",
    "AgentClient",
    "AgentError",
    "AgentTimeout",
    "AgentUnavailable",
    "Subscription",
    "WireUpload",
]
