"""End-to-end encryption for onionpost connections (docs/e2ee.md).

Pure code: no sockets, files or database.  Randomness is injected through
``rng`` parameters (``Callable[[int], bytes]``, default ``os.urandom``), states
are immutable values that serialize to bytes for the agent to persist.

Module overview::

    handshake   create_invitation -> create_request -> open_request
                -> accept_request -> complete_join   (X25519 x3 + ML-KEM-768)
    ratchet     ratchet_encrypt / ratchet_decrypt     (Double Ratchet, header encryption)
    padding     pad / unpad                           (fixed-size plaintext blocks)
    chain       SenderChain / ReceiverChain / classify (seq + previous-hash chain)
    safety      safety_code / codes_match             (60-digit security code)
    errors      E2EError and subclasses
    sizes       wire sizes and limits
"""

from .chain import (
    GENESIS_HASH,
    ChainLink,
    Classification,
    ReceiverChain,
    SenderChain,
    Verdict,
    classify,
    decode_message,
    encode_message,
    message_hash,
)
from .errors import (
    ChainError,
    DecryptError,
    E2EError,
    HandshakeError,
    PaddingError,
    ReplayError,
    SkipLimitError,
    StateError,
)
from .handshake import (
    ConnectionRequest,
    Invitation,
    InviterSecrets,
    JoinerPending,
    accept_request,
    complete_join,
    create_invitation,
    create_request,
    open_request,
)
from .padding import pad, unpad
from .ratchet import (
    MAX_SKIP,
    MAX_SKIPPED_TOTAL,
    RatchetState,
    ratchet_decrypt,
    ratchet_encrypt,
)
from .safety import codes_match, format_code, safety_code, safety_code_for_state
from .sizes import (
    E2E_MESSAGE_SIZE,
    MAX_ACCEPT_PAYLOAD,
    MAX_MESSAGE_PLAINTEXT,
    MAX_REQUEST_PAYLOAD,
    MESSAGE_PADDED_SIZE,
    RATCHET_OVERHEAD,
    RELAY_MAX_BODY,
)

# Everything in __all__ is the public API (pinned by tests/unit/client_e2e/test_e2e_api.py).
__all__ = sorted(
    [
        "ChainError",
        "ChainLink",
        "Classification",
        "ConnectionRequest",
        "DecryptError",
        "E2EError",
        "E2E_MESSAGE_SIZE",
        "GENESIS_HASH",
        "HandshakeError",
        "Invitation",
        "InviterSecrets",
        "JoinerPending",
        "MAX_ACCEPT_PAYLOAD",
        "MAX_MESSAGE_PLAINTEXT",
        "MAX_REQUEST_PAYLOAD",
        "MAX_SKIP",
        "MAX_SKIPPED_TOTAL",
        "MESSAGE_PADDED_SIZE",
        "PaddingError",
        "RATCHET_OVERHEAD",
        "RELAY_MAX_BODY",
        "RatchetState",
        "ReceiverChain",
        "ReplayError",
        "SenderChain",
        "SkipLimitError",
        "StateError",
        "Verdict",
        "accept_request",
        "classify",
        "codes_match",
        "complete_join",
        "create_invitation",
        "create_request",
        "decode_message",
        "encode_message",
        "format_code",
        "message_hash",
        "open_request",
        "pad",
        "ratchet_decrypt",
        "ratchet_encrypt",
        "safety_code",
        "safety_code_for_state",
        "unpad",
    ]
)
