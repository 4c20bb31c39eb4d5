"""The onionpost relay node: queues on disk, sessions over WebSocket, forwarding.

Modules: ``config`` (node.json), ``datadir`` (data directory, identity),
``store`` (QueueStore, SQLite), ``mailbox`` (queue semantics),
``committer`` (group commit), ``subscriptions``, ``throttle``,
``forwarder`` (FWD links), ``commands`` (dispatch), ``connection`` (one
WebSocket), ``server`` (aiohttp app, ``run``), ``onion`` (the tor of an
onion-mode node: launch or attach, publish, watch, stop), ``status``, ``cli``.
Spec: docs/protocol/relay.md.
"""
