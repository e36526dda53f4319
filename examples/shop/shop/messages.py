from __future__ import annotations

from dataclasses import dataclass

from tidings import named


@dataclass
class PlaceOrder:
    order_id: str
    customer: str
    total: int


@named("order.placed")
@dataclass
class OrderPlaced:
    order_id: str
    customer: str
    total: int


@dataclass
class OrderCount:
    pass
