"""Running diffc on Ray clusters: job submission through the Ray Jobs API, and a local test head."""
