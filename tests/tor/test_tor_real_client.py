"""The real-network torrc is accepted by tor (checked offline with --verify-config)."""

import subprocess

import pytest

from tests.tor.tor_helpers import require_tor
from onionpost.torconfig import process
from onionpost.torconfig.torrc import render_torrc

pytestmark = pytest.mark.tor


@pytest.mark.timeout(30)
@pytest.mark.parametrize("socks_port", ["127.0.0.1:auto", "0"])
def test_real_client_torrc_verifies(tmp_path, socks_port):
    require_tor()
    data_dir = process.make_private_dir(tmp_path / "data")
    torrc = tmp_path / "torrc"
    torrc.write_text(render_torrc("real_client", {
        "data_dir": data_dir, "control_port": "auto", "control_port_file": data_dir / "control-port",
        "log_file": data_dir / "notice.log", "socks_port": socks_port,
    }))
    (tmp_path / "defaults").touch()
    result = subprocess.run([process.tor_binary(), "--verify-config", "--defaults-torrc", str(tmp_path / "defaults"),
                             "-f", str(torrc)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr
