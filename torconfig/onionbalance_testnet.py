"""Run Onionbalance (``--is-testnet``) on a private network whose voting interval is not 20 s.

Onionbalance 0.2.x's testnet mode assumes chutney's 20 s voting interval when it derives
the time period (24 intervals), its rotation offset (12 intervals) and the shared-random
runs. Tor derives them from the consensus it has, and ``torconfig.testnet`` votes every
10 s: a master descriptor built for 20 s is blinded for another time period and uploaded to
HSDirs no client asks (measured: every HSDir answers NOT_FOUND). This entry point takes the
interval from the live consensus (fresh-until minus valid-after), as tor does, and then runs
Onionbalance unchanged::

    python -m onionpost.torconfig.onionbalance_testnet --is-testnet -c config.yaml -p PORT
"""

import stem.util
from onionbalance import manager
from onionbalance.hs_v3 import consensus

SR_ROUNDS = 12
"""Voting rounds per shared-random phase; a protocol run (and a test network's time period) has two."""


def _voting_interval(self) -> int:
    document = self.consensus
    return int((document.fresh_until - document.valid_after).total_seconds())


def _srv_phase_duration(self) -> int:
    return SR_ROUNDS * _voting_interval(self) // 60


def _time_period_length(self) -> int:
    return 2 * SR_ROUNDS * _voting_interval(self) // 60


def _start_of_current_srv_run(self) -> int:
    interval = _voting_interval(self)
    valid_after = int(stem.util.datetime_to_unix(self.consensus.valid_after))
    return valid_after - (valid_after // interval) % (2 * SR_ROUNDS) * interval


def _start_of_previous_srv_run(self) -> int:
    return _start_of_current_srv_run(self) - 2 * SR_ROUNDS * _voting_interval(self)


def patch() -> None:
    """Make Onionbalance's testnet timing follow the consensus' voting interval."""
    consensus.Consensus._get_srv_phase_duration = _srv_phase_duration
    consensus.Consensus.get_time_period_length = _time_period_length
    consensus.Consensus.get_start_time_of_current_srv_run = _start_of_current_srv_run
    consensus.Consensus.get_start_time_of_previous_srv_run = _start_of_previous_srv_run


if __name__ == "__main__":
    patch()
    manager.main()
