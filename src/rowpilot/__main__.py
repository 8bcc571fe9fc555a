"""``python -m rowpilot`` is the ``rowpilot`` command."""

from rowpilot.cli import main

main()
