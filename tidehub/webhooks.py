"""``tidehub.webhooks.verify(headers, body, secret)``: check that a webhook delivery came from Tidehub."""

from tidehub.client.webhooks import verify

__all__ = ["verify"]
