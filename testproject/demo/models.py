"""The demo's side effect: orders. Counting them shows whether a view ran twice."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.quantity} x {self.item}"


class Execution(models.Model):
    """One run of a chaos-test view (``demo.faults``): written when the view
    starts; ``finished_at`` set just before the view returns, ``answered_at``
    once the protection around it has stored its answer (or failed to). A run
    killed midway leaves them empty, and, in atomic mode, no row at all."""

    key = models.CharField(max_length=255, db_index=True)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key} in {self.pid}"


class Charge(models.Model):
    """A payment of the demo's Stripe-style API (``demo.payments``)."""

    amount = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    def as_stripe(self) -> dict[str, object]:
        """The charge as Stripe's API represents one."""
        return {
            "id": f"ch_{self.pk}",
            "object": "charge",
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
            "created": int(self.created_at.timestamp()),
        }
