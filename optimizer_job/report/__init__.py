"""Progress, metrics and status reporting for the engine."""
