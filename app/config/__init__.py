"""Destination and connection configuration: the models, their validation, the file format."""
