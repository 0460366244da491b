"""Validators that test_payload.py reaches by import path (tests.unit.payload_validators:...)."""

from __future__ import annotations

from pydantic import BaseModel, TypeAdapter


class Item(BaseModel):
    sku: str
    price: float


class Order(BaseModel):
    to: str
    items: list[Item]


int_list_adapter: TypeAdapter[list[int]] = TypeAdapter(list[int])

not_a_validator = 42


class FieldError(ValueError):
    """A validator's own exception that names the failing field."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def accept(payload: object) -> None:
    """Returns None: the payload is accepted."""


def reject(payload: object) -> bool:
    return False


def require_to(payload: object) -> bool:
    if not isinstance(payload, dict) or "to" not in payload:
        raise FieldError("a recipient is required", "to")
    return True


def explode(payload: object) -> None:
    raise RuntimeError("validator bug")
