"""Checking a webhook delivery from Tidehub (Standard Webhooks signatures)."""

from __future__ import annotations

from typing import Any, Mapping

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tidehub.client.errors import InvalidSignature


def verify(headers: Mapping[str, str], body: bytes | str, secret: str) -> dict[str, Any]:
    """The delivery's JSON payload, if ``headers`` (webhook-id, webhook-timestamp,
    webhook-signature) sign ``body`` with your account's ``secret`` (``whsec_...``, from
    ``GET /hub/v1/webhooks/secret``) and the timestamp is within five minutes; else raises
    InvalidSignature. Pass the body exactly as received, before any JSON parsing."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        payload = Webhook(secret).verify(body, lowered)
    except (WebhookVerificationError, ValueError) as exc:  # ValueError: a malformed header or body
        raise InvalidSignature(str(exc)) from None
    return payload
