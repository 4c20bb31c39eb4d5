"""onionproto: the relay protocol, sans I/O, shared by node and client.

No sockets, no aiohttp, no stem: only msgpack and PyNaCl. Spec:
docs/protocol/relay.md.
"""

from .address import NodeAddress, parse_node_address
from .errors import AddressError, ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .frames import (
    Ack,
    Command,
    Delete,
    Error,
    Forward,
    ForwardResult,
    Get,
    Message,
    New,
    NoMessage,
    Ok,
    Ping,
    Pong,
    QueueIds,
    RelayForward,
    RelayForwardResult,
    Response,
    SecureQueue,
    Send,
    Subscribe,
    SubscriptionEnded,
    Suspend,
    Transmission,
)
from .session import NEED_DATA, ClientSession, CommandReceived, CommandRejected, Connected, NodeSession, Reply
from .versions import BLOCK_SIZE, MAX_BODY, MAX_VERSION, MIN_VERSION, PROTOCOL_V1

__all__ = [
    "Ack", "AddressError", "BLOCK_SIZE", "ClientSession", "Command", "CommandReceived", "CommandRejected",
    "Connected", "Delete", "Error", "ErrorCode", "Forward", "ForwardResult", "Get", "LocalProtocolError",
    "MAX_BODY", "MAX_VERSION", "MIN_VERSION", "Message", "NEED_DATA", "New", "NoMessage", "NodeAddress",
    "NodeSession", "Ok", "PROTOCOL_V1", "Ping", "Pong", "ProtocolError", "QueueIds", "RelayForward",
    "RelayForwardResult", "RemoteProtocolError", "Reply", "Response", "SecureQueue", "Send", "Subscribe",
    "SubscriptionEnded", "Suspend", "Transmission", "parse_node_address",
]
