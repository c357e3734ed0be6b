"""Upstream credentials at rest: encrypted with a key derived from ``TIDEHUB_SECRET_KEY``.

Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) gives authenticated encryption, so a
tampered or foreign ciphertext is refused rather than decrypted into garbage.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SecretKeyMissing(RuntimeError):
    pass


class SecretBox:
    def __init__(self, secret_key: str) -> None:
        self._fernet: Fernet | None = None
        if secret_key:
            digest = hashlib.sha256(b"tidehub-credentials\0" + secret_key.encode()).digest()
            self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def _box(self) -> Fernet:
        if self._fernet is None:
            raise SecretKeyMissing(
                "TIDEHUB_SECRET_KEY is not set: it is needed to store and use channel credentials "
                "(set it to a long random string, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`, "
                "and keep it: credentials stored under one key cannot be read with another)"
            )
        return self._fernet

    def seal(self, plaintext: str) -> str:
        return self._box().encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._box().decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyMissing(
                "a channel credential cannot be decrypted with this TIDEHUB_SECRET_KEY (was the key changed?)"
            ) from None
