"""`python -m app.sandbox --host 127.0.0.1 --port 8099 ...`."""

from app.sandbox.cli import main

main()
