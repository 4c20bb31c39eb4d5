"""Tests for client.e2e (end-to-end encryption); pure, no sockets or files."""
