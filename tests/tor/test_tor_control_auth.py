"""Password and cookie authentication on an offline tor (DisableNetwork 1)."""

import subprocess
import time

import pytest

from tests.tor.tor_helpers import require_tor
from onionpost.torconfig import ControlError, process
from onionpost.torconfig.control import TorControl

pytestmark = pytest.mark.tor


@pytest.fixture
def offline_tor(tmp_path):
    """An offline tor with both a control password and a cookie; yields (control port, data dir)."""
    require_tor()
    hashed = subprocess.run([process.tor_binary(), "--quiet", "--hash-password", "secret"],
                            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    data_dir = process.make_private_dir(tmp_path / "data")
    torrc = tmp_path / "torrc"
    torrc.write_text(f"DataDirectory {data_dir}\nControlPort 127.0.0.1:auto\n"
                     f"ControlPortWriteToFile {data_dir}/control-port\nHashedControlPassword {hashed}\n"
                     f"CookieAuthentication 1\nSocksPort 0\nDisableNetwork 1\nLog notice file {data_dir}/log\n")
    proc = process.spawn_tor(torrc, tmp_path / "tor.out")
    try:
        deadline = time.monotonic() + 10
        while not (port := process.read_control_port_file(data_dir / "control-port")):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "tor.out").read_text()
            time.sleep(0.05)
        yield port, data_dir
    finally:
        process.stop_pids([proc.pid])
        proc.wait(5)


@pytest.mark.timeout(30)
async def test_password_and_cookie_authentication(offline_tor):
    port, data_dir = offline_tor
    for options in ({"password": "secret"}, {"cookie_path": data_dir / "control_auth_cookie"}, {}):
        async with await TorControl.connect(port, **options) as control:
            assert (await control.bootstrap_progress()).progress < 100
    with pytest.raises(ControlError):
        await TorControl.connect(port, password="wrong", cookie_path=data_dir / "missing-cookie")
