"""The worker's side of the control protocol: enrollment, the Connect session with
reconnects, bundle download and result upload.

Must not import ``tasks``, ``runtime`` or the CLI: the agent routes between them.
grpc errors are translated to the project's ControlError tree here, and only here.
"""
