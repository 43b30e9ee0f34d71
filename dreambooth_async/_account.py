"""The account and service-information calls of the client: request_count, wallet_balance,
system_load, model_list, model_reload. A base class of :class:`DreamboothClient`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._endpoints import MODEL_LIST, MODEL_RELOAD, REQUEST_COUNT, SYSTEM_LOAD, WALLET_BALANCE
from ._errors import APIError, RequestValidationError
from ._models import ModelInfo, SystemLoad, WalletBalance
from ._transport import RetryPolicy, Transport
from ._wire import inbound, parse_json, request_count_from

__all__ = ["AccountCalls"]


class AccountCalls:
    """Calls about the account and the service rather than one generation."""

    base_url: str
    _transport: Transport

    def _check_open(self) -> None:
        raise NotImplementedError  # the client's own

    def _key_index(self, index: int) -> int:
        raise NotImplementedError  # the client's own

    def _url(self, path: str) -> str:
        return self.base_url + path

    async def request_count(self, *, key_index: int = 0, retry: RetryPolicy | None = None) -> int:
        """How many of the account's requests the service is processing now
        (``/api/v6/processing/request_count``; the service allows 30 calls a minute).
        ``key_index``: which key's account, with several keys (0-based); ``retry`` overrides
        the retry policy."""
        self._check_open()
        body = await self._transport.call(
            self._url(REQUEST_COUNT),
            {},
            idempotent=True,
            parse=parse_json,
            retry=retry,
            key_index=self._key_index(key_index),
        )
        return request_count_from(body)

    async def wallet_balance(
        self, *, key_index: int = 0, retry: RetryPolicy | None = None
    ) -> WalletBalance:
        """The account's balance (``/api/wallet_balance``). ``key_index``: which key's
        account, with several keys (0-based); ``retry`` overrides the retry policy."""
        self._check_open()
        body = await self._transport.call(
            self._url(WALLET_BALANCE),
            {},
            idempotent=True,
            parse=parse_json,
            retry=retry,
            key_index=self._key_index(key_index),
        )
        if not isinstance(body, Mapping):
            raise APIError("wallet_balance did not answer with a JSON object")
        return inbound.structure(body, WalletBalance)

    async def system_load(self) -> SystemLoad:
        """The service's queue length and wait (``/api/v3/system_load``)."""
        self._check_open()
        body = await self._transport.call(
            self._url(SYSTEM_LOAD), {}, idempotent=True, parse=parse_json
        )
        if not isinstance(body, Mapping):
            raise APIError("system_load did not answer with a JSON object", body=None)
        return inbound.structure(body, SystemLoad)

    async def model_list(self) -> list[ModelInfo]:
        """The models the account can use (``/api/v4/dreambooth/model_list``)."""
        self._check_open()
        body = await self._transport.call(
            self._url(MODEL_LIST), {}, idempotent=True, parse=parse_json
        )
        if isinstance(body, Mapping):  # some deployments wrap the list
            body = body.get("data") or body.get("models") or []
        if not isinstance(body, list):
            raise APIError("model_list did not answer with a list")
        return [inbound.structure(item, ModelInfo) for item in body if isinstance(item, Mapping)]

    async def model_reload(self, model_id: str) -> Mapping[str, Any]:
        """Ask the service to load ``model_id`` again (it takes about two minutes)."""
        self._check_open()
        if not isinstance(model_id, str) or not model_id.strip():
            raise RequestValidationError("model_id", model_id, "a non-empty string")
        body = await self._transport.call(
            self._url(MODEL_RELOAD), {"model_id": model_id}, idempotent=False, parse=parse_json
        )
        return body if isinstance(body, Mapping) else {"raw": body}
