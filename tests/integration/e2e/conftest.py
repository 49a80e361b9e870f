from tests.integration.core.conftest import DevMaster, Node, devmaster, make_node, wait_for  # noqa: F401  (fixtures)
