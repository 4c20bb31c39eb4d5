"""Onion services published through publish_onion, reached through the client tor."""

import asyncio
import os
import time

import aiohttp
import pytest
from aiohttp_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError

from onionpost.transport.retry import retrying
from tests.tor.tor_helpers import fetch, socks_session
from onionpost.torconfig import onion_keys
from onionpost.torconfig.socks import isolation_credentials

pytestmark = pytest.mark.tor


@pytest.mark.timeout(120)
async def test_onion_service_serves_aiohttp(client_tor, host_control, web_port):
    seed = os.urandom(32)
    address = await host_control.publish_onion(seed, {80: web_port})
    assert address == onion_keys.onion_address_of_key(seed)
    async with socks_session(client_tor, isolation_credentials("serve")) as session:
        body = await fetch(session, f"http://{address}/world")
    assert body == "hello world"
    await host_control.remove_onion(address)


@pytest.mark.timeout(120)
async def test_persistent_key_keeps_its_address(client_tor, host_control, web_port):
    seed = os.urandom(32)
    first = await host_control.publish_onion(seed, {80: web_port})
    await host_control.remove_onion(first)
    # The same key as tor's expanded form (as stored in hs_ed25519_secret_key).
    expanded = onion_keys.from_secret_key_file(onion_keys.to_secret_key_file(seed))
    second = await host_control.publish_onion(expanded, {80: web_port})
    assert second == first == onion_keys.onion_address_of_key(seed)
    async with socks_session(client_tor, isolation_credentials("persistent")) as session:
        body = await fetch(session, f"http://{second}/again")
    assert body == "hello again"
    await host_control.remove_onion(second)


@pytest.mark.timeout(120)
async def test_descriptor_findable_tells_published_from_unknown_onions(client_control, host_control, web_port):
    address = await host_control.publish_onion(os.urandom(32), {80: web_port})
    try:
        assert await _findable_within(client_control, address, seconds=60) is True
        # HSDirs answer "not found" for an onion nobody published.
        unknown = onion_keys.onion_address_of_key(os.urandom(32))
        assert await client_control.descriptor_findable(unknown) is False
    finally:
        await host_control.remove_onion(address)


async def _findable_within(control, address, *, seconds):
    """Ask until the descriptor is found or ``seconds`` pass; return the last answer.

    publish_onion returns after the first HSDir has the descriptor; tor
    uploads to the other responsible HSDirs (and again when the consensus
    moves the hash ring) shortly after, so a client asking the others at
    once may still hear NOT_FOUND, as in a CI run where two said so.
    """
    deadline = time.monotonic() + seconds
    while True:
        answer = await control.descriptor_findable(address)
        if answer is True or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(2)


@pytest.mark.timeout(180)
async def test_proof_of_work_defence_is_in_the_descriptor(client_tor, client_control, host_control, web_port):
    """Issue 12, item 6: nodes publish with tor's PoW defence; clients see its parameters and still connect."""
    from stem.descriptor.hidden_service import HiddenServiceDescriptorV3

    seed = os.urandom(32)
    address = await host_control.publish_onion(seed, {80: web_port}, pow_defense=True)
    attempts = []

    async def fetch_on_a_fresh_circuit() -> str:
        # Right after publication a client can still meet an HSDir without the descriptor: try again
        # on a new circuit, with the client's own backoff, as the product does.
        attempts.append(1)
        async with socks_session(client_tor, isolation_credentials(f"pow-{len(attempts)}")) as session:
            return await fetch(session, f"http://{address}/pow")

    try:
        assert await retrying(fetch_on_a_fresh_circuit, within=90,
                              transient=(ProxyError, ProxyConnectionError, ProxyTimeoutError, aiohttp.ClientError,
                                         asyncio.TimeoutError, OSError)) == "hello pow"
        raw = await asyncio.to_thread(
            client_control._controller.get_info, f"hs/client/desc/id/{onion_keys.service_id(address)}"
        )
        inner = HiddenServiceDescriptorV3.from_str(raw).decrypt(address)
        assert "pow-params v1" in str(inner)
    finally:
        await host_control.remove_onion(address)
