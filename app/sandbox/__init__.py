"""A local imitation of Outreach's REST API v2 for tests and the demo."""

from app.sandbox.cli import add_arguments, config_from_args
from app.sandbox.config import SandboxConfig
from app.sandbox.server import make_app, run

__all__ = ["SandboxConfig", "add_arguments", "config_from_args", "make_app", "run"]
