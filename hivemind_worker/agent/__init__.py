"""The daemon: lifecycle, supervision of subsystems, routing between the control
session and the task manager. Also enrollment, which assembles the node identity.

Must not import the CLI or devmaster.
"""
