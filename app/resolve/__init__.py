"""Identity resolution: profiles known by email reach their prospects (looked up in batches,
cached, created at most once), a stage of the drain before the senders."""
