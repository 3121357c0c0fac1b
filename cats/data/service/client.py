"""A client of the Data Service (what the CLI uses): the URL from `CATS_DATA_SERVICE`, the token from `CATS_DATA_TOKEN`.

Every refusal or failure raises DataServiceError with the service's own reason and the HTTP status.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx

from cats.data.service import models as m
from cats.errors import DataServiceError


def _seg(handle: str) -> str:
    """A handle as one path segment, whatever it holds."""
    return quote(handle, safe="")


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        url = url or os.environ.get("CATS_DATA_SERVICE")
        token = token or os.environ.get("CATS_DATA_TOKEN")
        if not url:
            raise DataServiceError("CATS_DATA_SERVICE is not set: the data service's URL, e.g. http://127.0.0.1:8470")
        if not token:
            raise DataServiceError("CATS_DATA_TOKEN is not set: a token from `cats data token add NAME` "
                                   "(run where the service keeps its state)")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise DataServiceError(f"{what}: cannot reach the data service at {self.url} "
                                   f"(CATS_DATA_SERVICE): {type(e).__name__}: {e}") from None
        if response.status_code >= 400:
            try:
                reason = response.json()["detail"]
            except (ValueError, KeyError, TypeError):
                reason = response.text.strip()[:200] or response.reason_phrase
            subject = what.rsplit(" ", 1)[-1]  # the handle or URI; the service's reasons usually name it already
            message = reason if subject in reason else f"{what}: {reason}"
            raise DataServiceError(f"{message} (HTTP {response.status_code})", response.status_code)
        return response

    def register(self, uri: str, meta: m.Meta | None = None, ttl_s: float | None = None,
                 readers: list[str] | None = None, replicas: list[str] | None = None) -> m.Dataset:
        body = m.RegisterRequest(uri=uri, meta=meta or m.Meta(), ttl_s=ttl_s, readers=readers or [],
                                 replicas=replicas or [])
        response = self._call("POST", "/data/register", f"register {uri}",
                              json=body.model_dump(mode="json", exclude_none=True))
        return m.Dataset.model_validate(response.json())

    def get(self, handle: str) -> m.Dataset:
        return m.Dataset.model_validate(self._call("GET", f"/data/{_seg(handle)}", f"get {handle}").json())

    def sign(self, handle: str, ttl_s: float = 3600.0, replica: int = 0) -> m.Signed:
        response = self._call("POST", "/data/sign", f"sign {handle}",
                              json={"handle": handle, "ttl_s": ttl_s, "replica": replica})
        return m.Signed.model_validate(response.json())

    def log(self, handle: str, limit: int = 1000) -> m.AccessLog:
        response = self._call("GET", f"/data/{_seg(handle)}/log", f"log of {handle}", params={"limit": limit})
        return m.AccessLog.model_validate(response.json())

    def delete(self, handle: str) -> None:
        self._call("DELETE", f"/data/{_seg(handle)}", f"delete {handle}")
