"""The onionpost relay node: queues on disk, sessions over WebSocket, forwarding.

Modules: ``config`` (node.json), ``datadir`` (data directory, identity),
``store`` (QueueStore, SQLite), ``mailbox`` (queue semantics),
``committer`` (group commit), ``subscriptions``, ``throttle``,
``forwarder`` (FWD links), ``commands`` (dispatch), ``connection`` (one
WebSocket), ``server`` (aiohttp app, ``run``), ``status``, ``cli``.
Spec: docs/protocol/relay.md.
"""
