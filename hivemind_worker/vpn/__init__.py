"""WireGuard for the node (keys, wg0.conf, wg-quick up/down, status) and the
dev-master's hub side. Nothing here talks to the master's gRPC API."""
