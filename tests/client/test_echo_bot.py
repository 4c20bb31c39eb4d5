"""examples/echo_bot.py answers through the daemon's API, and misses nothing across its own restart."""

import subprocess
import sys

import pytest

from .conftest import REPO, Person
from .daemon_helpers import DaemonProcess, connect_daemons, stop_all, wait_until

FAST = ("--link-spread", "1", "--receipt-delay", "0.2", "--link-gap", "0")


def start_bot(home):
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "echo_bot.py"), "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    line = proc.stdout.readline()  # it says so once its subscription is in place
    assert line.strip() == "echo bot: listening", line + (stop(proc) if proc.poll() is not None else "")
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    output = proc.stdout.read()
    proc.stdout.close()
    return output


@pytest.mark.timeout(120)
def test_echo_bot_answers_and_resumes_after_a_restart(tmp_path, nodes):
    relay = nodes("relay")
    alice, bot = (Person(tmp_path / name, name, [relay]) for name in ("alice", "bot"))
    daemons = []
    bot_process = None
    try:
        daemons += [DaemonProcess(alice.home, *FAST).start(), DaemonProcess(bot.home, *FAST).start()]
        bot_alias, _ = connect_daemons(*daemons)
        bot_process = start_bot(bot.home)

        def answers():
            return [m["text"] for m in daemons[0].call("history", contact=bot_alias, limit=20) if m["direction"] == "in"]

        daemons[0].call("send", contact=bot_alias, text="ping")
        wait_until(lambda: "echo: ping" in answers(), timeout=60, what="the first echo")
        output = stop(bot_process)  # the bot dies (SIGKILL); a message arrives meanwhile
        assert "Traceback" not in output, output
        daemons[0].call("send", contact=bot_alias, text="ping 2")
        wait_until(lambda: any(m["text"] == "ping 2" for m in daemons[1].call("history", contact="alice")),
                   what="ping 2 stored by the bot's daemon")
        bot_process = start_bot(bot.home)
        wait_until(lambda: "echo: ping 2" in answers(), timeout=60, what="the echo after the restart")
        assert answers().count("echo: ping") == 1
    finally:
        if bot_process is not None:
            stop(bot_process)
        stop_all(daemons)
