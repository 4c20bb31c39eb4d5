"""Workload 4: latency over Tor, on the private Tor network (torconfig.testnet), all on 127.0.0.1.

Set-up: a private network (3 authorities + 4 relays), a client tor (SOCKS,
IsolateSOCKSAuth) and an onion-host tor. Three onion services on the host
tor: a bare aiohttp HTTP server (in this process) and two onionpost nodes A
and B (``bench.onion_node``: the node's app with a TorConnector, so A
forwards to B over Tor). Every connection uses its own SOCKS credentials,
hence its own fresh circuit.

Figures:
* bare: a plain HTTP GET over an onion circuit. Per fresh circuit: the first
  request (circuit + rendezvous + TCP + HTTP) and the median of 5 keep-alive
  round trips on it. Medians over many circuits.
* relay PING: per fresh onion session to node A: connect (circuit + WebSocket
  + relay handshake) and the median of 5 PING round trips.
* delivery: client S (session to A) sends FWD with an envelope for a queue on
  B, subscribed by client R (session to B); A forwards over its own session
  to B, which stores and pushes to R. Per trial, fresh S and R circuits
  (A→B is the forwarder's one pooled circuit): connect→first delivered, then
  the median send→deliver of 5 messages; the legs' own round trips (PING on
  S's and R's sessions; A→B estimated as S's FWD round trip minus S's PING
  round trip) give the bare budget (RTT_SA + RTT_AB + RTT_BR) / 2.

Mode of each circuit: "fast" (≈1 ms round trips) or "Nagle" (≈88 ms: a random
share of loopback circuits, see the private-network research note); the
threshold is 30 ms.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import aiohttp

from .common import NodeProcess, Result, Row, ServerProcess, Skipped, median, ratio

SLOW_MS = 30.0


def mode_of(rtt_ms: float) -> str:
    return "Nagle" if rtt_ms >= SLOW_MS else "fast"


def split(values: list[float]) -> dict:
    fast = [v for v in values if v < SLOW_MS]
    slow = [v for v in values if v >= SLOW_MS]
    return {"n": len(values), "median": median(values), "fast_n": len(fast), "fast_median": median(fast),
            "nagle_n": len(slow), "nagle_median": median(slow)}


async def bare_http(onion: str, socks_port: int, circuits: int) -> dict:
    from aiohttp_socks import ProxyConnector, ProxyType

    from onionpost.torconfig.socks import isolation_credentials

    firsts, rtts, block_rtts = [], [], []
    for i in range(circuits):
        user, password = isolation_credentials(f"bare-{i}-{os.urandom(8).hex()}")
        connector = ProxyConnector(proxy_type=ProxyType.SOCKS5, host="127.0.0.1", port=socks_port, username=user, password=password, rdns=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
            t0 = time.perf_counter()
            async with http.get(f"http://{onion}/ping") as r:
                await r.read()
            firsts.append(1000 * (time.perf_counter() - t0))
            per = []
            for _ in range(5):
                t0 = time.perf_counter()
                async with http.get(f"http://{onion}/ping") as r:
                    await r.read()
                per.append(1000 * (time.perf_counter() - t0))
            rtts.append(median(per))
            per = []
            block = os.urandom(16384)
            for _ in range(5):
                t0 = time.perf_counter()
                async with http.post(f"http://{onion}/echo", data=block) as r:
                    if len(await r.read()) != len(block):
                        raise RuntimeError("bare echo returned a wrong size")
                per.append(1000 * (time.perf_counter() - t0))
            block_rtts.append(median(per))
    return {"first_request_ms": split_plain(firsts), "rtt_ms": split(rtts), "raw_rtts": rtts,
            "block_rtt_ms": split(block_rtts), "raw_block_rtts": block_rtts}


def split_plain(values: list[float]) -> dict:
    return {"n": len(values), "median": median(values), "min": min(values), "max": max(values)}


async def relay_ping(address, socks_port: int, sessions: int) -> dict:
    from onionpost.proto import Ping
    from onionpost.transport import RelayLink
    from onionpost.transport.tor import TorConnector

    connector = TorConnector(socks_port=socks_port)
    connects, rtts = [], []
    for i in range(sessions):
        t0 = time.perf_counter()
        link = await RelayLink.connect(address, connector=connector, isolation=f"ping-{i}-{os.urandom(8).hex()}", timeout=60)
        connects.append(1000 * (time.perf_counter() - t0))
        per = []
        for _ in range(5):
            t0 = time.perf_counter()
            await link.request(Ping())
            per.append(1000 * (time.perf_counter() - t0))
        rtts.append(median(per))
        await link.close()
    return {"connect_ms": split_plain(connects), "rtt_ms": split(rtts), "raw_rtts": rtts}


async def _ping_rtt(link, n: int = 5) -> float:
    from onionpost.proto import Ping

    per = []
    for _ in range(n):
        t0 = time.perf_counter()
        await link.request(Ping())
        per.append(1000 * (time.perf_counter() - t0))
    return median(per)


async def delivery(a_address, b_address, socks_port: int, trials: int, messages: int = 5,
                   recipient_socks_port: int | None = None) -> dict:
    """Sender S through ``socks_port``; recipient R through ``recipient_socks_port`` (default: the same tor)."""
    from onionpost.proto import Ack, Forward, Message, New, Ok, SecureQueue, Send, Subscribe, crypto, forward
    from onionpost.proto.delivery import open_message
    from onionpost.transport import RelayLink
    from onionpost.transport.tor import TorConnector

    from .loadgen import make_pool

    pool, _ = make_pool(messages + 1)
    connector = TorConnector(socks_port=socks_port)
    r_connector = connector if recipient_socks_port is None else TorConnector(socks_port=recipient_socks_port)
    rows = []
    for trial in range(trials):
        tag = f"{trial}-{os.urandom(8).hex()}"
        arrivals: asyncio.Queue = asyncio.Queue()
        rkey, rsecret = crypto.signing_keypair()
        dh_public, dh_secret = crypto.dh_keypair()
        skey, ssecret = crypto.signing_keypair()

        def on_push(rid, response):
            if isinstance(response, Message):
                arrivals.put_nowait((time.perf_counter(), response))

        recipient = await RelayLink.connect(b_address, connector=r_connector, isolation=f"r-{tag}", on_push=on_push, timeout=60)
        ids = await recipient.request(New(rkey=rkey, dhkey=dh_public, akey=None), None, rsecret)
        queue_key = crypto.queue_secret(dh_secret, ids.dhkey)
        await recipient.request(SecureQueue(skey=skey), ids.rid, rsecret)
        await recipient.request(Subscribe(), ids.rid, rsecret)

        async def send(link, body: bytes) -> float:
            envelope, response_key = forward.seal_send(b_address.key, ids.snd, Send(body), ssecret, int(time.time()), os.urandom)
            t0 = time.perf_counter()
            result = await link.request(Forward(str(b_address), envelope))
            answer = forward.open_response(response_key, result.env)
            if not isinstance(answer, Ok):
                raise RuntimeError(f"forwarded SEND answered {answer}")
            return t0

        async def received(expected: bytes) -> float:
            t, msg = await asyncio.wait_for(arrivals.get(), 60)
            _, body = open_message(queue_key, msg.box)
            if body != expected:
                raise RuntimeError("delivered body differs from the one sent")
            asyncio.get_running_loop().create_task(recipient.request(Ack(msg.mid), ids.rid, rsecret))
            return t

        t_connect = time.perf_counter()
        sender = await RelayLink.connect(a_address, connector=connector, isolation=f"s-{tag}", timeout=60)
        await send(sender, pool[0])
        first = 1000 * (await received(pool[0]) - t_connect)
        lat, fwd_rtts = [], []
        for i in range(1, messages + 1):
            t0 = await send(sender, pool[i])
            fwd_rtts.append(1000 * (time.perf_counter() - t0))
            lat.append(1000 * (await received(pool[i]) - t0))
            await asyncio.sleep(0.02)
        rtt_sa = await _ping_rtt(sender)
        rtt_rb = await _ping_rtt(recipient)
        rtt_ab = max(0.0, median(fwd_rtts) - rtt_sa)
        rows.append({
            "connect_to_first_delivered_ms": first, "deliver_ms": median(lat), "fwd_rtt_ms": median(fwd_rtts),
            "rtt_sa_ms": rtt_sa, "rtt_rb_ms": rtt_rb, "rtt_ab_est_ms": rtt_ab,
            "bare_budget_ms": (rtt_sa + rtt_ab + rtt_rb) / 2,
            "modes": f"S→A {mode_of(rtt_sa)}, A→B {mode_of(rtt_ab)}, B→R {mode_of(rtt_rb)}",
        })
        await sender.close()
        await recipient.close()
    all_fast = [r for r in rows if "Nagle" not in r["modes"]]
    return {
        "trials": rows,
        "deliver_ms": median([r["deliver_ms"] for r in rows]),
        "bare_budget_ms": median([r["bare_budget_ms"] for r in rows]),
        "ratio_per_trial_median": median([r["deliver_ms"] / r["bare_budget_ms"] for r in rows if r["bare_budget_ms"] > 0]),
        "connect_to_first_delivered_ms": median([r["connect_to_first_delivered_ms"] for r in rows]),
        "all_fast_trials": len(all_fast),
        "all_fast_deliver_ms": median([r["deliver_ms"] for r in all_fast]),
        "all_fast_budget_ms": median([r["bare_budget_ms"] for r in all_fast]),
    }


async def _measure(host_tor, client_tor, workdir: Path, quick: bool) -> dict:
    from aiohttp import web

    from onionpost.proto import NodeAddress
    from onionpost.torconfig.control import TorControl

    async def ping(request):
        return web.Response(text="pong")

    async def echo(request):
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    bare_port = runner.addresses[0][1]
    nodes = []
    control = await TorControl.connect(host_tor.control_port, cookie_path=host_tor.control_cookie_path)
    try:
        for name in ("A", "B"):
            node = NodeProcess.init(workdir / f"onion-node-{name}")
            proc = ServerProcess(["-m", "bench.onion_node", "--data", str(node.data_dir), "--socks-port", str(client_tor.socks_port)],
                                 workdir / f"onion-node-{name}.log").start()
            key = bytes.fromhex(proc.line.rsplit(" ", 1)[1])
            port = int(node.address.rsplit(":", 1)[1])
            nodes.append((node, proc, key, port))
        t0 = time.perf_counter()
        onions = await asyncio.gather(
            control.publish_onion(os.urandom(32), {80: bare_port}),
            *(control.publish_onion(os.urandom(32), {80: port}) for _, _, _, port in nodes),
        )
        publish_s = time.perf_counter() - t0
        bare_onion = onions[0]
        a_address = NodeAddress(nodes[0][2], onions[1], 80)
        b_address = NodeAddress(nodes[1][2], onions[2], 80)
        circuits = 12 if quick else 30
        out = {"publish_s": publish_s}
        out["bare"] = await bare_http(bare_onion, client_tor.socks_port, circuits)
        out["ping"] = await relay_ping(a_address, client_tor.socks_port, circuits)
        out["delivery"] = await delivery(a_address, b_address, client_tor.socks_port, 4 if quick else 10)
        return out
    finally:
        await control.close()
        for _, proc, _, _ in nodes:
            proc.stop()
        await runner.cleanup()


def run(quick: bool, workdir: Path) -> Result:
    from onionpost.torconfig.errors import TorError
    from onionpost.torconfig.launch import start_client_and_host
    from onionpost.torconfig.testnet import PrivateTorNetwork

    result = Result("tor")
    if not shutil.which("tor") and not Path("/usr/sbin/tor").exists() or not shutil.which("tor-gencert"):
        raise Skipped("tor and tor-gencert are not installed (scripts/setup.sh installs them)")
    network = PrivateTorNetwork(workdir / "testnet")
    tors = []
    t0 = time.perf_counter()
    try:
        network.up()
        up_s = time.perf_counter() - t0
        tors = list(start_client_and_host(workdir / "client-tor", workdir / "host-tor", network.directory))
        client_tor, host_tor = tors
        data = asyncio.run(_measure(host_tor, client_tor, workdir, quick))
    except TorError as exc:
        raise RuntimeError(f"the private Tor network failed: {exc}") from None
    finally:
        for tor in tors:
            tor.stop()
        network.down()
    data["network_up_s"] = up_s
    result.details = data
    bare, ping, dl = data["bare"], data["ping"], data["delivery"]

    def modes(d):
        return f"{d['fast_n']} fast (median {_f(d['fast_median'])} ms), {d['nagle_n']} Nagle (median {_f(d['nagle_median'])} ms)"

    result.rows += [
        Row("tor", "bare HTTP round trip, established onion circuit", bare["rtt_ms"]["median"], None, "", "ms", None,
            note=f"{bare['rtt_ms']['n']} fresh circuits: {modes(bare['rtt_ms'])}"),
        Row("tor", "bare HTTP round trip, 16 KB up + 16 KB down (block-sized)", bare["block_rtt_ms"]["median"], bare["rtt_ms"]["median"],
            "bare HTTP round trip (tiny)", "ms", ratio(bare["block_rtt_ms"]["median"], bare["rtt_ms"]["median"]),
            note=f"same circuits: {modes(bare['block_rtt_ms'])}"),
        Row("tor", "relay PING round trip, established onion session", ping["rtt_ms"]["median"], bare["block_rtt_ms"]["median"],
            "bare HTTP 16 KB round trip", "ms", ratio(ping["rtt_ms"]["median"], bare["block_rtt_ms"]["median"]),
            note=f"{ping['rtt_ms']['n']} fresh sessions: {modes(ping['rtt_ms'])}; vs tiny bare RTT: {_f(ratio(ping['rtt_ms']['median'], bare['rtt_ms']['median']))}×"),
        Row("tor", "send→deliver via A→B forwarding (median of trials)", dl["deliver_ms"], dl["bare_budget_ms"],
            "bare one-way legs (RTT_SA+RTT_AB+RTT_BR)/2", "ms", dl["ratio_per_trial_median"], "≤ 1.2×",
            dl["ratio_per_trial_median"] <= 1.2 if dl["ratio_per_trial_median"] else None,
            "; ".join(f"{r['deliver_ms']:.0f} ms [{r['modes']}]" for r in dl["trials"])),
        Row("tor", "send→deliver, trials with all legs fast", dl["all_fast_deliver_ms"], dl["all_fast_budget_ms"], "bare one-way legs", "ms",
            ratio(dl["all_fast_deliver_ms"], dl["all_fast_budget_ms"]), "≤ 1.2×",
            (ratio(dl["all_fast_deliver_ms"], dl["all_fast_budget_ms"]) or 99) <= 1.2 if dl["all_fast_trials"] else None,
            f"{dl['all_fast_trials']} of {len(dl['trials'])} trials"),
        Row("tor", "fresh circuits: connect → first delivered message", dl["connect_to_first_delivered_ms"], bare["first_request_ms"]["median"],
            "bare: first HTTP response on a fresh circuit", "ms", ratio(dl["connect_to_first_delivered_ms"], bare["first_request_ms"]["median"]),
            note=f"relay connect+handshake alone: median {ping['connect_ms']['median']:.0f} ms"),
        Row("tor", "private network up / 3 onions published", data["network_up_s"], data["publish_s"], "publish", "s", None),
    ]
    return result


def _f(x):
    return "–" if x is None else f"{x:.1f}"
