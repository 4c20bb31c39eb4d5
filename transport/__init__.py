"""transport: async WebSocket glue between onionproto sessions and the network.

Shared by the client and by nodes that forward to other nodes (which act as
clients of the destination), so neither imports the other. A ``Connector``
opens the WebSocket: directly for loopback nodes, through Tor's SOCKS port for
``.onion`` nodes.
"""

from .connector import Connector, DirectConnector
from .link import LinkClosed, RelayError, RelayLink

__all__ = ["Connector", "DirectConnector", "LinkClosed", "RelayError", "RelayLink"]
