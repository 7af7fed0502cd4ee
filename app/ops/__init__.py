"""What operators see: status documents, alert rules and their runner, logs, Sentry, and the
start-up checks."""
