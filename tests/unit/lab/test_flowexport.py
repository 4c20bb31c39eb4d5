"""The DeepCoFFEA/ESPRESSO layout: inflow/ and outflow/ files with matching names round-trip."""

import numpy as np
import pytest

from onionpost.lab import flowexport, synthflow

pytestmark = pytest.mark.timeout(30)


def test_each_owned_session_becomes_a_matching_pair_of_files(tmp_path):
    flows, sessions = synthflow.generate(n_people=3, sessions_per_person=2, seed=1, duration=120)
    names = flowexport.export_pairs(flows, sessions, tmp_path, margin=1.0)
    assert len(names) == 6 and names[0] == "user0_user0-s0"
    assert sorted(p.name for p in (tmp_path / "inflow").iterdir()) == sorted(names)
    assert sorted(p.name for p in (tmp_path / "outflow").iterdir()) == sorted(names)
    session, flow = sessions[0], flows[0]
    t, size = flowexport.read_pair_file(tmp_path / "outflow" / names[0])
    assert np.allclose(t + session.t.min(), session.t, atol=1e-6) and size.tolist() == session.size.tolist()
    t, size = flowexport.read_pair_file(tmp_path / "inflow" / names[0])
    inside = (flow.t >= session.t.min() - 1) & (flow.t <= session.t.max() + 1)
    assert size.tolist() == flow.size[inside].tolist() and t.min() >= -1.0
    assert (size > 0).any() and (size < 0).any()


def test_an_export_never_mixes_with_an_older_one(tmp_path):
    flows, sessions = synthflow.generate(n_people=2, sessions_per_person=1, seed=1, duration=60)
    flowexport.export_pairs(flows, sessions, tmp_path)
    with pytest.raises(ValueError, match="already holds"):
        flowexport.export_pairs(flows, sessions, tmp_path)


def test_a_malformed_line_is_refused(tmp_path):
    path = tmp_path / "f"
    path.write_text("0.5\t100\n0.7 -100\n")
    with pytest.raises(ValueError, match="line 2"):
        flowexport.read_pair_file(path)
