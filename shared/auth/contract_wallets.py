"""ERC-1271 verification for smart-contract wallets, behind a small protocol the verifier depends on.

The verifier only needs "is there a contract at ``address``?" and "does it accept ``signature`` over ``digest``?".
The first question (``eth_getCode``, cached per address) keeps bad signatures for plain EOAs from costing an
``eth_call`` each: their digests are unique, so the answer cache could never absorb them. Each question takes a
``before_rpc`` hook, awaited only when the cache cannot answer: the verifier's global RPC budget, which may raise
instead of letting the call happen. Production builds
``Web3ContractWallets`` from ``STRONGROOM_ETH_RPC_URL``; tests pass the same class built on web3's
``EthereumTesterProvider``, so the code under test is the code that runs. web3 is an optional dependency
(``strongroom[contracts]``) and is imported only when an RPC URL is configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from shared.errors import AuthError, Unavailable
from shared.settings import Settings

ERC1271_MAGIC = bytes.fromhex("1626ba7e")  # bytes4(keccak256("isValidSignature(bytes32,bytes)"))
CACHE_TTL_SECONDS = 30.0
CODE_CACHE_TTL_SECONDS = 60.0  # a wallet deployed after a "no code" answer is usable within a minute
CACHE_SIZE = 4096

RpcHook = Callable[[], Awaitable[None]]


class ContractWallets(Protocol):
    """Answers ERC-1271 questions for one chain. Raises ``Unavailable`` when the chain cannot be asked, and
    ``AuthError`` (``contract_wallet_unsupported``) for a chain it does not serve. ``before_rpc`` is awaited
    before each RPC call the implementation actually makes (not for cached answers); whatever it raises
    propagates and the call is not made."""

    async def has_code(self, chain_id: int, address: str, *, before_rpc: RpcHook | None = None) -> bool: ...

    async def is_valid_signature(
        self, chain_id: int, address: str, digest: bytes, signature: bytes, *, before_rpc: RpcHook | None = None
    ) -> bool: ...


def encode_is_valid_signature(digest: bytes, signature: bytes) -> bytes:
    """Calldata for ``isValidSignature(bytes32 hash, bytes signature)``."""
    from eth_abi import encode

    return ERC1271_MAGIC + encode(["bytes32", "bytes"], [digest, signature])


class Web3ContractWallets:
    """ERC-1271 through a synchronous ``web3.Web3`` run in a worker thread, with a timeout and a short cache.

    A sync client is used because the test chain (``EthereumTesterProvider``) is sync-only; the thread also keeps
    a slow RPC from blocking the event loop. The cache holds results for ``cache_ttl`` seconds: a contract may
    change its mind (owner rotation), so entries stay short-lived.
    """

    def __init__(
        self,
        w3: Any,
        *,
        timeout: float,
        cache_ttl: float = CACHE_TTL_SECONDS,
        code_cache_ttl: float = CODE_CACHE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._w3 = w3
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._code_cache_ttl = code_cache_ttl
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, bool]] = OrderedDict()
        self._code_cache: OrderedDict[tuple[int, str], tuple[float, bool]] = OrderedDict()
        self._chain_id: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Web3ContractWallets | None:
        """``None`` when no RPC URL is configured: the verifier then refuses contract wallets."""
        if not settings.eth_rpc_url:
            return None
        from web3 import HTTPProvider, Web3

        provider = HTTPProvider(settings.eth_rpc_url, request_kwargs={"timeout": settings.eth_rpc_timeout})
        return cls(Web3(provider), timeout=settings.eth_rpc_timeout)

    async def has_code(self, chain_id: int, address: str, *, before_rpc: RpcHook | None = None) -> bool:
        """Whether ``address`` holds contract code (``eth_getCode``), cached per address for ``code_cache_ttl``."""
        key = (chain_id, address.lower())
        ttl = self._code_cache_ttl
        return await self._cached(self._code_cache, key, ttl, before_rpc, self._code_at, chain_id, address)

    async def is_valid_signature(
        self, chain_id: int, address: str, digest: bytes, signature: bytes, *, before_rpc: RpcHook | None = None
    ) -> bool:
        key = hashlib.sha256(b"|".join([str(chain_id).encode(), address.lower().encode(), digest, signature])).digest()
        args = (chain_id, address, digest, signature)
        return await self._cached(self._cache, key, self._cache_ttl, before_rpc, self._ask, *args)

    async def _cached(
        self,
        cache: OrderedDict[Any, tuple[float, bool]],
        key: Any,
        ttl: float,
        before_rpc: RpcHook | None,
        ask: Callable[..., bool],
        *args: Any,
    ) -> bool:
        """One RPC question in a worker thread, with the timeout and a bounded TTL cache; failures are never a yes."""
        now = self._clock()
        cached = cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if before_rpc is not None:
            await before_rpc()
        try:
            result = await asyncio.wait_for(asyncio.to_thread(ask, *args), self._timeout)
        except (AuthError, Unavailable):
            raise
        except Exception:  # timeouts, connection errors, malformed RPC answers: never a yes
            raise Unavailable("the Ethereum RPC endpoint is unavailable", code="rpc_unavailable") from None
        cache[key] = (now + ttl, result)
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
        return result

    def _require_chain(self, chain_id: int) -> None:
        if self._chain_id is None:
            self._chain_id = int(self._w3.eth.chain_id)
        if chain_id != self._chain_id:
            raise AuthError(
                f"contract wallets are verified on chain {self._chain_id} only", code="contract_wallet_unsupported"
            )

    def _code_at(self, chain_id: int, address: str) -> bool:
        from web3 import Web3

        self._require_chain(chain_id)
        return len(bytes(self._w3.eth.get_code(Web3.to_checksum_address(address)))) > 0

    def _ask(self, chain_id: int, address: str, digest: bytes, signature: bytes) -> bool:
        from web3 import Web3
        from web3.exceptions import ContractLogicError

        self._require_chain(chain_id)
        call = {"to": Web3.to_checksum_address(address), "data": encode_is_valid_signature(digest, signature)}
        try:
            answer = bytes(self._w3.eth.call(call))
        except ContractLogicError:  # reverted: the contract does not accept it (or is not a 1271 wallet)
            return False
        return len(answer) >= 4 and answer[:4] == ERC1271_MAGIC
