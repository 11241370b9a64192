"""Cloud Storage for Google's batch recognition: a chunk uploaded as an object, recognized from
its `gs://` URI (no 10 MB inline limit), deleted afterwards.

Uses the Cloud Storage JSON API (simple media upload, object delete) through google-auth's
`AuthorizedSession` (google-auth and requests come with google-cloud-speech), so no storage SDK
is needed. Credentials are the environment's default (`GOOGLE_APPLICATION_CREDENTIALS`, the
workload's account); Speech reads the object with the same identity. Calls run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import quote

from ingest.engines.base import EngineError
from ingest.files.retrying import ThrottledError, retry_after_s

STORAGE_URL = "https://storage.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)


class CloudStorage:
    def __init__(
        self,
        bucket: str,
        prefix: str = "meeting-gateway/recordings/",
        storage_url: str = STORAGE_URL,
        credentials: Any = None,  # google.auth credentials; None: the environment's default
        timeout_s: float = 300.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.storage_url = storage_url.rstrip("/")
        self.timeout_s = timeout_s
        self._credentials = credentials
        self._session: Any = None

    def _session_now(self) -> Any:
        if self._session is None:
            from google.auth import default
            from google.auth.transport.requests import AuthorizedSession

            credentials = self._credentials
            if credentials is None:
                try:
                    credentials, _ = default(scopes=list(SCOPES))
                except Exception as exc:
                    raise EngineError(f"cloud storage credentials unavailable "
                                      f"({type(exc).__name__})", retryable=False,
                                      reason="auth") from None  # fmt: skip
            self._session = AuthorizedSession(credentials)
        return self._session

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{self.prefix}{name}"

    async def upload(self, name: str, data: bytes, content_type: str = "audio/flac") -> str:
        """Store `data` as `prefix + name`; returns its `gs://` URI."""
        url = f"{self.storage_url}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"
        params = {"uploadType": "media", "name": self.prefix + name}
        headers = {"Content-Type": content_type}
        response = await self._call("POST", url, params=params, data=data, headers=headers)
        if response.status_code >= 300:
            raise storage_error(response.status_code, dict(response.headers))
        return self.uri(name)

    async def delete(self, name: str) -> None:
        """Remove the object (best effort: a lifecycle rule on the bucket is the backstop)."""
        object_name = quote(self.prefix + name, safe="")
        url = f"{self.storage_url}/storage/v1/b/{quote(self.bucket, safe='')}/o/{object_name}"
        with contextlib.suppress(Exception):
            await self._call("DELETE", url)

    async def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        from google.auth import exceptions as auth_errors

        session = self._session_now()
        try:
            return await asyncio.to_thread(
                session.request, method, url, timeout=self.timeout_s, **kwargs
            )
        except EngineError:
            raise
        except auth_errors.GoogleAuthError as exc:
            if isinstance(exc, auth_errors.TransportError):  # the token endpoint unreachable
                raise EngineError("cloud storage token refresh failed", reason="connect") from None
            # Refreshing after a 401 failed: the credentials themselves are refused.
            raise EngineError(f"cloud storage refused the credentials ({type(exc).__name__})",
                              retryable=False, reason="auth") from None  # fmt: skip
        except Exception as exc:  # connection refused, reset, timeout
            message = f"cloud storage request failed ({type(exc).__name__})"
            raise EngineError(message, reason="connect") from None

    def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.close()
            self._session = None


def storage_error(status: int, headers: dict[str, str]) -> EngineError:
    if status in (401, 403):
        return EngineError(f"cloud storage refused the credentials (HTTP {status})",
                           retryable=False, reason="auth")  # fmt: skip
    if status == 429 or status >= 500:
        reason = "rate_limited" if status == 429 else "server_error"
        return ThrottledError(f"cloud storage failed (HTTP {status})", reason=reason,
                              retry_after_s=retry_after_s(headers))  # fmt: skip
    return EngineError(f"cloud storage rejected the upload (HTTP {status})", retryable=False,
                       reason="bad_request")  # fmt: skip
