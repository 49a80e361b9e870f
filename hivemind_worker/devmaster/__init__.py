"""The reference control plane (`hivemind-worker dev-master`).

A faithful, small master-side peer of the control protocol with SQLite state, for
tests, the demo and operators who want to try a node. It is not the product's
master and must not grow a scheduler: it assigns queued tasks first-fit, in
priority order, to connected nodes with free capacity, and nothing more.

Modules: ``layout`` (state directory), ``ca`` (CA and server certificate),
``db`` (schema), ``registry`` (tokens, nodes, credentials), ``taskdb`` (tasks,
events, logs, results), ``attempts`` (events applied once, deferrals, lost tasks run
again, absent nodes), ``service`` (the gRPC servicer), ``sessions`` (Connect
streams and assignment), ``server`` (lifecycle of `serve`), ``submit`` (queue a task
and wait for it), ``hub`` (the optional WireGuard hub seam).

The daemon (agent and below) never imports this package; only the CLI does.
"""
