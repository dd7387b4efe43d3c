"""Operations: the admin port, readiness, reload, workers, the status page."""
