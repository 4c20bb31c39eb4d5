"""The guard-link capture's parts that need no tor: pcap parsing, control events, flow files."""

import json

import dpkt
import pytest

from onionpost.lab import guardlink

pytestmark = pytest.mark.timeout(30)

CLIENT, GUARD, OTHER = 40000, 5000, 41000


def segment(sport: int, dport: int, payload: bytes, *, cut: int | None = None) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=1, flags=dpkt.tcp.TH_ACK, data=payload)
    ip = dpkt.ip.IP(src=bytes([127, 0, 0, 1]), dst=bytes([127, 0, 0, 1]), p=dpkt.ip.IP_PROTO_TCP, data=tcp)
    ip.len = len(ip)
    frame = bytes(dpkt.ethernet.Ethernet(src=b"\0" * 6, dst=b"\0" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))
    return frame if cut is None else frame[:cut]


def test_a_pcap_written_by_dpkt_becomes_signed_payload_sizes(tmp_path):
    path = tmp_path / "link.pcap"
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=128, linktype=dpkt.pcap.DLT_EN10MB)
        writer.writepkt(segment(CLIENT, GUARD, b"x" * 543), ts=100.25)
        writer.writepkt(segment(GUARD, CLIENT, b""), ts=100.5)  # a bare ACK carries no data
        writer.writepkt(segment(GUARD, CLIENT, b"y" * 1086, cut=128), ts=101.0)  # cut by the snaplen
        writer.writepkt(segment(OTHER, GUARD, b"z" * 99), ts=101.5)  # another client's connection
        writer.writepkt(segment(CLIENT, OTHER, b"w" * 7), ts=101.75)  # another process, the same local port
        writer.writepkt(b"\x01\x02", ts=102.0)  # garbage is skipped, not fatal
    assert guardlink.pcap_packets(path, [(CLIENT, GUARD)]) == [(100.25, 543), (101.0, -1086)]
    assert guardlink.pcap_packets(path, [(CLIENT, GUARD), (OTHER, GUARD)])[-1] == (101.5, 99)


def test_one_shared_capture_read_once_gives_each_client_its_own_connections(tmp_path):
    # The lab runs one tcpdump for every user (lab/guardlink.py, start_shared_tcpdump) and reads it once.
    path = tmp_path / "links.pcap"
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=128, linktype=dpkt.pcap.DLT_EN10MB)
        writer.writepkt(segment(OTHER, GUARD, b"o" * 10), ts=99.0)
        writer.writepkt(segment(CLIENT, GUARD, b"x" * 543), ts=100.25)
        writer.writepkt(segment(GUARD, OTHER, b"p" * 20), ts=100.5)
        writer.writepkt(segment(GUARD, CLIENT, b"y" * 1086, cut=128), ts=101.0)
    segments = guardlink.pcap_segments(path)
    assert guardlink.packets_on(segments, [(CLIENT, GUARD)]) == guardlink.pcap_packets(path, [(CLIENT, GUARD)]) \
        == [(100.25, 543), (101.0, -1086)]
    assert guardlink.packets_on(segments, [(OTHER, GUARD)]) == [(99.0, 10), (100.5, -20)]
    assert guardlink.packets_on(segments, [(OTHER, 1234)]) == []


def test_a_file_that_is_not_a_pcap_is_refused(tmp_path):
    path = tmp_path / "x.pcap"
    path.write_bytes(b"not a capture at all, really")
    with pytest.raises(guardlink.CaptureError, match="not a pcap"):
        guardlink.pcap_packets(path, [(CLIENT, GUARD)])


# Lines a client tor 0.4.9.11 wrote on the private network (tests/tor/test_tor_guardlink.py): its
# own circuits count only the cells they send; and the control-spec's example of a relayed circuit.
CELL_STATS_CAPTURED = [
    "CELL_STATS ID=1 OutboundQueue=4125654533 OutboundConn=1 OutboundRemoved=relay:6,create_fast:1 "
    "OutboundTime=relay:0,create_fast:0",
    "CELL_STATS ID=7 OutboundQueue=3935439476 OutboundConn=3 OutboundRemoved=relay_early:5,create2:1 "
    "OutboundTime=relay_early:0,create2:0",
    "CELL_STATS ID=12 OutboundQueue=3755819825 OutboundConn=3 OutboundRemoved=relay:34 OutboundTime=relay:0",
]
CELL_STATS_RELAYED = ("650 CELL_STATS InboundQueue=19403 InboundConn=32 InboundAdded=relay:1,created_fast:1 "
                      "InboundRemoved=relay:1,created_fast:1 InboundTime=relay:0,created_fast:0 "
                      "OutboundQueue=6710 OutboundConn=18 OutboundAdded=create:1,relay_early:1 "
                      "OutboundRemoved=create:1,relay_early:1 OutboundTime=create:0,relay_early:0")


def test_cell_stats_events_are_parsed_per_direction_and_type():
    first, second, third = (guardlink.parse_cell_stats(line) for line in CELL_STATS_CAPTURED)
    assert first["circuit"] == "1" and first["outbound_conn"] == "1" and first["inbound_conn"] is None
    assert first["outbound_removed"] == {"relay": 6, "create_fast": 1} and first["outbound_added"] == {}
    assert (first["outbound_cells"], first["inbound_cells"]) == (7, 0)
    assert second["outbound_removed"] == {"relay_early": 5, "create2": 1} and second["outbound_conn"] == "3"
    assert third["outbound_cells"] == 34
    relayed = guardlink.parse_cell_stats(CELL_STATS_RELAYED)  # with the 650 or without
    assert relayed["circuit"] is None and relayed["inbound_conn"] == "32"
    assert relayed["inbound_removed"] == {"relay": 1, "created_fast": 1} and relayed["outbound_cells"] == 2


@pytest.mark.parametrize("line", ["CONN_BW ID=1 TYPE=OR READ=1 WRITTEN=2", "CELL_STATS ID=1 OutboundAdded=relay:x"])
def test_other_or_malformed_cell_stats_lines_are_refused(line):
    with pytest.raises(ValueError):
        guardlink.parse_cell_stats(line)


def test_conn_bw_events():
    assert guardlink.parse_conn_bw("650 CONN_BW ID=5 TYPE=OR READ=1086 WRITTEN=543") == ("5", "OR", 1086, 543)
    with pytest.raises(ValueError, match="malformed"):
        guardlink.parse_conn_bw("CONN_BW ID=5 TYPE=OR READ=lots WRITTEN=0")


def test_proc_net_tcp_rows():
    text = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            "   0: 0100007F:9C40 0100007F:1388 01 00000000:00000000 00:00000000 00000000     0        0 4242 1\n"
            "   1: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n")
    assert guardlink.parse_proc_tcp(text) == [("127.0.0.1", 40000, "127.0.0.1", 5000, "01", 4242),
                                              ("0.0.0.0", 5000, "0.0.0.0", 0, "0A", 77)]


def test_the_capture_filter_names_the_relays_orports():
    assert guardlink.bpf_filter({5001: "AB", 5000: "CD"}) == "tcp and (port 5000 or port 5001)"
    with pytest.raises(guardlink.CaptureError):
        guardlink.bpf_filter([])


def test_a_flow_file_round_trips_in_time_order(tmp_path):
    header = {"flow": "alice", "source": "tcpdump", "resolution": 0.0}
    path = guardlink.write_flow(tmp_path / "alice.jsonl", header, [(2.5, -1086), (1.25, 543)])
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == header and json.loads(lines[1]) == {"t": 1.25, "size": 543}
    flow = guardlink.read_flow(path)
    assert flow.source == "tcpdump" and flow.t.tolist() == [1.25, 2.5] and flow.size.tolist() == [543, -1086]
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("lines, problem", [
    ([], "empty"),
    (['{"flow": "a", "source": "wiretap"}'], "line 1"),
    (['{"flow": "a", "source": "control"}', '{"t": 1.0}'], "line 2"),
    (['{"flow": "a", "source": "control"}', '{"t": 1.0, "size": 2}', '{"t": "soon", "size": 2}'], "line 3"),
    (['{"flow": "a", "source": "control"}', '{"t": 1.0, "size": 2.5}'], "line 2"),
])
def test_a_malformed_flow_file_is_refused_with_its_line(tmp_path, lines, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(guardlink.CaptureError, match=problem):
        guardlink.read_flow(path)


@pytest.mark.parametrize("kwargs, problem", [
    ({"name": "alice", "source": "wiretap"}, "source must be"),
    ({"name": "../alice"}, "plain file name"),
])
def test_bad_capture_arguments_are_refused_before_anything_starts(tmp_path, kwargs, problem):
    with pytest.raises(guardlink.CaptureError, match=problem):
        guardlink.start_capture(tmp_path, tor_pid=1, control_port=1, **kwargs)
    assert not list(tmp_path.iterdir())
