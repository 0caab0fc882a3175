import pytest

from corral import tool
from corral.errors import ToolDefinitionError


@tool(timeout=10, required_roles=("support",))
async def lookup_order(order_id: str, include_items: bool = False) -> dict:
    """Look up an order.

    Args:
        order_id: the order's id, like A-1
        include_items: list the items too
    """
    return {"order_id": order_id, "items": [] if include_items else None}


def test_schema_comes_from_signature_and_docstring():
    assert lookup_order.name == "lookup_order"
    assert lookup_order.description == "Look up an order."
    params = lookup_order.parameters
    assert params["type"] == "object"
    assert params["required"] == ["order_id"]
    assert params["properties"]["order_id"] == {"type": "string", "description": "the order's id, like A-1"}
    assert params["properties"]["include_items"]["default"] is False
    assert lookup_order.timeout == 10
    assert lookup_order.required_roles == frozenset({"support"})


def test_validation_coerces_and_names_the_field():
    assert lookup_order.validate({"order_id": "A-1"}) == {"order_id": "A-1", "include_items": False}
    with pytest.raises(ValueError, match="order_id"):
        lookup_order.validate({})
    with pytest.raises(ValueError, match="include_items"):
        lookup_order.validate({"order_id": "A-1", "include_items": "perhaps"})


def test_roles():
    assert lookup_order.allowed_for({"support", "admin"})
    assert not lookup_order.allowed_for(set())


async def test_sync_tools_run_in_a_thread_and_decorated_functions_stay_callable():
    import threading

    @tool
    def where() -> str:
        """Which thread."""
        return threading.current_thread().name

    assert await where.invoke() != threading.current_thread().name
    assert where() == threading.current_thread().name


def test_var_kwargs_cannot_be_described():
    with pytest.raises(ToolDefinitionError):

        @tool
        def bad(**kwargs: int) -> None:
            """Bad."""
