"""Integration tests run real processes over loopback TLS: the `devmaster` and
`make_node` fixtures (tests/conftest.py, over tests/support/stack.py) serve every area."""
