"""Suite-wide: run the fast tests first, so a newcomer sees a failure in seconds, not after the Tor tests.

Order: unit tests (no sockets, no processes), then loopback integration (real
node processes, real client homes), then everything marked ``tor`` (a private
Tor network). pytest keeps the order of tests within each group.
"""

import pytest

STAGES = ("unit", "loopback", "tor")


def stage(item: pytest.Item) -> int:
    if item.get_closest_marker("tor") is not None:
        return STAGES.index("tor")
    parts = item.path.parts
    if "unit" in parts or item.path.name.startswith("test_unit_"):
        return STAGES.index("unit")
    return STAGES.index("loopback")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=stage)
