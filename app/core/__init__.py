"""The foundation every part stands on: settings, Redis keys and defaults, Redis clients,
redaction of secrets, and the error tree. Imports nothing of the service."""
