"""Task execution: admission, state machine, journal, workspaces, logs and results.

Must not import ``control`` (the agent routes task events to the session) nor the CLI.
"""
