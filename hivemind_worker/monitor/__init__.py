"""The local web monitor: a read-only Starlette app (monitor.html, /api/*, /events,
/metrics) served by uvicorn inside the daemon's event loop. It reads the node through
a ``NodeView`` and never changes anything: no endpoint starts, stops or configures."""
