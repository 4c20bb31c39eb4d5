"""The correlation lab: how well a relay operator links queues by timing alone."""
