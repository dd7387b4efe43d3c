"""Strict fake providers of the seed documents, for tests (see base.py for the common API)."""

from .b2b import B2B
from .base import (
    AccessToken,
    ApiRequest,
    FakeProvider,
    Fault,
    RefreshToken,
    TokenRequest,
    serve,
    start,
)
from .getpaid import GetPaid
from .invoice_ng import InvoiceNg
from .invoiced import Invoiced
from .taxizer import Taxizer

__all__ = [
    "AccessToken",
    "ApiRequest",
    "B2B",
    "Fault",
    "FakeProvider",
    "GetPaid",
    "InvoiceNg",
    "Invoiced",
    "RefreshToken",
    "Taxizer",
    "TokenRequest",
    "serve",
    "start",
]
