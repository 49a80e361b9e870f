"""`python -m hivemind_worker` is the same as the `hivemind-worker` command."""

from hivemind_worker.cli.main import main

main()
