"""ERC-1271 contract wallets, for real: a tiny wallet contract on an in-process chain (eth-tester + py-evm).

The wallet is written below in EVM assembly (no compiler at test time): ``isValidSignature(bytes32, bytes)``
ecrecovers the 65-byte signature and answers the magic value ``0x1626ba7e`` when it recovers to the owner baked
into the code, ``0xffffffff`` otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from eth_account import Account

from shared.auth.contract_wallets import ERC1271_MAGIC, Web3ContractWallets
from shared.auth.signer import sign_request
from shared.auth.verifier import SignedRequest, Verifier
from shared.errors import AuthError
from shared.settings import Settings

pytestmark = pytest.mark.integration

web3 = pytest.importorskip("web3")
pytest.importorskip("eth_tester")

OPCODES = {
    "STOP": 0x00, "ADD": 0x01, "EQ": 0x14, "SHL": 0x1B, "SHR": 0x1C, "CALLDATALOAD": 0x35,
    "CODECOPY": 0x39, "POP": 0x50, "MLOAD": 0x51, "MSTORE": 0x52, "JUMPI": 0x57, "GAS": 0x5A,
    "JUMPDEST": 0x5B, "DUP1": 0x80, "RETURN": 0xF3, "STATICCALL": 0xFA,
}  # fmt: skip


def assemble(program: list[Any]) -> bytes:
    """Mnemonics, ``("PUSH", n, value)`` and ``("PUSHLABEL", name)``/``("LABEL", name)`` (2-byte jump targets)."""
    labels: dict[str, int] = {}
    for pass_ in range(2):
        code = bytearray()
        for op in program:
            if isinstance(op, str):
                code.append(OPCODES[op])
            elif op[0] == "PUSH":
                code.append(0x5F + op[1])
                code += int(op[2]).to_bytes(op[1], "big")
            elif op[0] == "PUSHLABEL":
                code.append(0x61)  # PUSH2
                code += labels.get(op[1], 0).to_bytes(2, "big")
            elif op[0] == "LABEL":
                labels[op[1]] = len(code)
                code.append(OPCODES["JUMPDEST"])
        if pass_:
            return bytes(code)
    raise AssertionError("unreachable")


def wallet_runtime(owner: str) -> bytes:
    def answer(value: int) -> list[Any]:
        return [("PUSH", 4, value), ("PUSH", 1, 0xE0), "SHL", ("PUSH", 1, 0), "MSTORE",
                ("PUSH", 1, 0x20), ("PUSH", 1, 0), "RETURN"]  # fmt: skip

    return assemble(
        [
            ("PUSH", 1, 0x04), "CALLDATALOAD", ("PUSH", 1, 0x00), "MSTORE",  # mem[0x00] = hash
            ("PUSH", 1, 0x24), "CALLDATALOAD", ("PUSH", 1, 0x04), "ADD",  # p = offset of the bytes length word
            "DUP1", ("PUSH", 1, 0x20), "ADD", "CALLDATALOAD", ("PUSH", 1, 0x40), "MSTORE",  # mem[0x40] = r
            "DUP1", ("PUSH", 1, 0x40), "ADD", "CALLDATALOAD", ("PUSH", 1, 0x60), "MSTORE",  # mem[0x60] = s
            ("PUSH", 1, 0x60), "ADD", "CALLDATALOAD", ("PUSH", 1, 0xF8), "SHR",  # v = first byte after s
            ("PUSH", 1, 0x20), "MSTORE",  # mem[0x20] = v
            ("PUSH", 1, 0x20), ("PUSH", 1, 0x80), ("PUSH", 1, 0x80), ("PUSH", 1, 0x00),
            ("PUSH", 1, 0x01), "GAS", "STATICCALL", "POP",  # ecrecover(mem[0:0x80]) -> mem[0x80]
            ("PUSH", 1, 0x80), "MLOAD", ("PUSH", 20, int(owner, 16)), "EQ", ("PUSHLABEL", "ok"), "JUMPI",
            *answer(0xFFFFFFFF),
            ("LABEL", "ok"),
            *answer(int.from_bytes(ERC1271_MAGIC, "big")),
        ]
    )  # fmt: skip


def deploy_code(runtime: bytes) -> bytes:
    init = bytes([0x60, len(runtime), 0x80, 0x60, 11, 0x60, 0x00, 0x39, 0x60, 0x00, 0xF3])
    return init + runtime


@pytest.fixture(scope="module")
def chain() -> Any:
    from web3 import EthereumTesterProvider, Web3

    return Web3(EthereumTesterProvider())


def deploy_wallet(w3: Any, owner: str) -> str:
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "data": deploy_code(wallet_runtime(owner))})
    address = w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]
    assert w3.eth.get_code(address), "deployment produced no code"
    return str(address).lower()


def contract_signed(owner_key: str, wallet: str, chain_id: int) -> SignedRequest:
    """Signed by ``owner_key``, but naming the wallet contract as keyid (what a smart-account SDK sends)."""
    url = "https://strongroom.example/api/v1/operations"

    class WalletSigner:
        address = wallet

        def sign_message(self, message: Any) -> Any:
            return Account.from_key(owner_key).sign_message(message)

    headers = sign_request(WalletSigner(), "GET", url, chain_id=chain_id, created=int(time.time()))
    return SignedRequest("GET", "strongroom.example", "/api/v1/operations", "?", headers, b"")


class NoRedisNeeded:
    """The refusal paths below end before Redis; the accepted path needs a real SET NX."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    async def set(self, key: str, value: bytes, *, nx: bool, ex: int) -> bool | None:
        if key in self.keys:
            return None
        self.keys.add(key)
        return True


def verifier_for(w3: Any, redis: Any, clock: Any = time.time, **overrides: Any) -> Verifier:
    chain_id = int(w3.eth.chain_id)
    overrides.setdefault("eth_rpc_calls_per_minute", 0)  # the budget tests below turn it on, with a real Redis
    settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:1/0"},
        allowed_chain_ids=(1, chain_id),
        rate_limit_per_minute=0,
        eth_rpc_url="http://in-process",
        **overrides,
    )
    return Verifier(settings, redis, clock=clock, contract_wallets=Web3ContractWallets(w3, timeout=10))


def test_owner_signature_is_accepted_for_the_wallet(chain: Any, redis_url: str) -> None:
    import redis.asyncio as aioredis

    owner = "0x" + "a1" * 32
    wallet = deploy_wallet(chain, Account.from_key(owner).address)
    request = contract_signed(owner, wallet, int(chain.eth.chain_id))

    async def run() -> Any:
        redis = aioredis.Redis.from_url(redis_url)
        try:
            return await verifier_for(chain, redis).verify(request)
        finally:
            await redis.aclose()

    signer = asyncio.run(run())
    assert signer.address == wallet and signer.chain_id == int(chain.eth.chain_id)


def test_a_stranger_cannot_sign_for_the_wallet(chain: Any) -> None:
    owner, stranger = "0x" + "a2" * 32, "0x" + "b2" * 32
    wallet = deploy_wallet(chain, Account.from_key(owner).address)
    request = contract_signed(stranger, wallet, int(chain.eth.chain_id))
    with pytest.raises(AuthError) as info:
        asyncio.run(verifier_for(chain, NoRedisNeeded()).verify(request))
    assert info.value.code == "signature_invalid"


def test_a_non_65_byte_signature_goes_to_the_contract_and_is_refused(chain: Any) -> None:
    owner = "0x" + "a3" * 32
    wallet = deploy_wallet(chain, Account.from_key(owner).address)
    request = contract_signed(owner, wallet, int(chain.eth.chain_id))
    signature = base64.b64encode(b"\x01" * 96).decode()
    request = SignedRequest(**{**request.__dict__, "headers": {**request.headers, "Signature": f"eth=:{signature}:"}})
    with pytest.raises(AuthError) as info:
        asyncio.run(verifier_for(chain, NoRedisNeeded()).verify(request))
    assert info.value.code == "signature_invalid"


def test_other_chain_is_contract_wallet_unsupported(chain: Any) -> None:
    owner = "0x" + "a4" * 32
    wallet = deploy_wallet(chain, Account.from_key(owner).address)
    request = contract_signed(owner, wallet, 1)  # keyid names mainnet, the RPC serves the test chain
    with pytest.raises(AuthError) as info:
        asyncio.run(verifier_for(chain, NoRedisNeeded()).verify(request))
    assert info.value.code == "contract_wallet_unsupported"


def test_without_rpc_a_contract_wallet_is_signature_invalid(chain: Any) -> None:
    owner = "0x" + "a5" * 32
    wallet = deploy_wallet(chain, Account.from_key(owner).address)
    request = contract_signed(owner, wallet, int(chain.eth.chain_id))
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}, allowed_chain_ids=(int(chain.eth.chain_id),))
    with pytest.raises(AuthError) as info:
        asyncio.run(Verifier(settings, NoRedisNeeded()).verify(request))  # type: ignore[arg-type]
    assert info.value.code == "signature_invalid"


def test_answers_are_cached_briefly(chain: Any) -> None:
    owner = "0x" + "a6" * 32
    wallet = deploy_wallet(chain, Account.from_key(owner).address)
    now = [0.0]
    wallets = Web3ContractWallets(chain, timeout=10, cache_ttl=30, clock=lambda: now[0])
    calls = []
    original = wallets._ask
    wallets._ask = lambda *a: calls.append(a) or original(*a)  # type: ignore[method-assign]
    digest, chain_id = b"\x11" * 32, int(chain.eth.chain_id)
    signature = bytes(Account.from_key(owner).unsafe_sign_hash(digest).signature)
    for _ in range(2):
        assert asyncio.run(wallets.is_valid_signature(chain_id, wallet, digest, signature)) is True
    now[0] = 31.0
    assert asyncio.run(wallets.is_valid_signature(chain_id, wallet, digest, signature)) is True
    assert len(calls) == 2


@pytest.fixture(scope="module")
def recorded_chain() -> Any:
    """A chain of its own whose provider records every JSON-RPC method it is asked (``.methods``)."""
    from web3 import EthereumTesterProvider, Web3

    class RecordingProvider(EthereumTesterProvider):  # type: ignore[misc]
        methods: list[str] = []

        def make_request(self, method: Any, params: Any) -> Any:
            self.methods.append(str(method))
            return super().make_request(method, params)

    w3 = Web3(RecordingProvider())
    w3.eth.chain_id  # noqa: B018 (warm up, so tests see only their own calls)
    return w3


@pytest.fixture
def rpc_log(recorded_chain: Any) -> list[str]:
    methods: list[str] = recorded_chain.provider.methods
    methods.clear()
    return methods


def test_an_eoa_bad_signature_makes_no_eth_call(recorded_chain: Any, rpc_log: list[str]) -> None:
    """Finding 8: a keyid naming a plain account (no code) is refused after one cached eth_getCode per address;
    unique digests per request can no longer turn each bad signature into an eth_call."""
    victim = Account.from_key("0x" + "c1" * 32).address.lower()  # an EOA: never deployed anything
    chain_id = int(recorded_chain.eth.chain_id)
    verifier = verifier_for(recorded_chain, NoRedisNeeded())
    rpc_log.clear()
    for _ in range(3):  # three different requests (fresh nonces, so fresh digests) signed by the wrong key
        request = contract_signed("0x" + "c2" * 32, victim, chain_id)
        with pytest.raises(AuthError) as info:
            asyncio.run(verifier.verify(request))
        assert info.value.code == "signature_invalid"
    assert "eth_call" not in rpc_log
    assert rpc_log.count("eth_getCode") == 1  # cached per address
    owner = "0x" + "c3" * 32
    wallet = deploy_wallet(recorded_chain, Account.from_key(owner).address)
    rpc_log.clear()
    with pytest.raises(AuthError):  # the control: a contract wallet is still asked
        asyncio.run(verifier.verify(contract_signed("0x" + "c2" * 32, wallet, chain_id)))
    assert rpc_log.count("eth_getCode") == 1 and rpc_log.count("eth_call") == 1


def _with_client(request: SignedRequest, client: str) -> SignedRequest:
    return SignedRequest(**{**request.__dict__, "client": client})


def _fresh_client() -> str:
    import secrets

    return f"192.0.2.{secrets.randbelow(250) + 1}:{secrets.token_hex(4)}"  # unique per test run (a key, not an IP)


def test_a_client_out_of_refusals_for_the_wallet_gets_no_rpc_at_all(
    recorded_chain: Any, redis_url: str, rpc_log: list[str]
) -> None:
    """Finding 8: the (client, keyid address) failure budget is checked before the ERC-1271 path spends any RPC
    call; the same client may still try another address, and another client the same one."""
    import redis.asyncio as aioredis

    from shared.auth.replay import FailureLimited, count_failure

    owner = "0x" + "a7" * 32
    wallet = deploy_wallet(recorded_chain, Account.from_key(owner).address)
    other_wallet = deploy_wallet(recorded_chain, Account.from_key("0x" + "a8" * 32).address)
    client, elsewhere = _fresh_client(), _fresh_client()
    chain_id = int(recorded_chain.eth.chain_id)

    async def run() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        try:
            verifier = verifier_for(recorded_chain, redis, auth_failures_per_minute=2)
            for _ in range(2):
                await count_failure(redis, client, limit=2, now=time.time(), address=wallet)
            rpc_log.clear()
            with pytest.raises(FailureLimited):
                await verifier.verify(_with_client(contract_signed("0x" + "b7" * 32, wallet, chain_id), client))
            assert rpc_log == []
            for stranger in (_with_client(contract_signed("0x" + "b7" * 32, other_wallet, chain_id), client),
                             _with_client(contract_signed("0x" + "b7" * 32, wallet, chain_id), elsewhere)):  # fmt: skip
                with pytest.raises(AuthError) as info:
                    await verifier.verify(stranger)
                assert info.value.code == "signature_invalid"
            assert rpc_log.count("eth_call") == 2
        finally:
            await redis.aclose()

    asyncio.run(run())


def test_a_neighbour_behind_the_same_ip_cannot_lock_out_a_wallet_user(recorded_chain: Any, redis_url: str) -> None:
    """Finding 8: the neighbour uses up the shared IP's whole failure budget, on other addresses and on no address
    at all; the contract-wallet user behind the same IP still signs in (before, the IP budget gated ERC-1271)."""
    import redis.asyncio as aioredis

    from shared.auth.replay import FailureLimited, count_failure

    owner = "0x" + "a9" * 32
    wallet = deploy_wallet(recorded_chain, Account.from_key(owner).address)
    shared_ip = _fresh_client()
    chain_id = int(recorded_chain.eth.chain_id)

    async def run() -> Any:
        redis = aioredis.Redis.from_url(redis_url)
        try:
            verifier = verifier_for(recorded_chain, redis, auth_failures_per_minute=3)
            with pytest.raises(FailureLimited):
                for n in range(10):
                    address = None if n % 2 else "0x" + f"{n:02x}" * 20
                    await count_failure(redis, shared_ip, limit=3, now=time.time(), address=address)
            return await verifier.verify(_with_client(contract_signed(owner, wallet, chain_id), shared_ip))
        finally:
            await redis.aclose()

    assert asyncio.run(run()).address == wallet


def test_the_global_rpc_budget_bounds_calls_across_clients_and_addresses(
    recorded_chain: Any, redis_url: str, rpc_log: list[str]
) -> None:
    """Finding 8: fresh clients and fresh addresses each start with a full pair budget, so what bounds their total
    RPC cost is the budget all replicas share; past it the answer is 503 rpc_busy with Retry-After and no call."""
    import redis.asyncio as aioredis

    from shared.auth.replay import RpcBusy
    from shared.layout import redis_rpc_budget_key

    chain_id = int(recorded_chain.eth.chain_id)
    owner = "0x" + "aa" * 32
    wallet = deploy_wallet(recorded_chain, Account.from_key(owner).address)

    async def run() -> list[str]:
        redis = aioredis.Redis.from_url(redis_url)
        now = time.time()  # frozen: every call falls in one budget window, however slow the test runs
        try:
            await redis.delete(redis_rpc_budget_key(int(now // 60)))
            verifier = verifier_for(recorded_chain, redis, clock=lambda: now, eth_rpc_calls_per_minute=3)
            outcomes = []
            rpc_log.clear()
            for n in range(5):  # a fresh EOA address each time: a cache miss for eth_getCode each time
                victim = Account.from_key("0x" + f"{n + 0xD0:02x}" * 32).address.lower()
                request = _with_client(contract_signed("0x" + "c2" * 32, victim, chain_id), _fresh_client())
                try:
                    await verifier.verify(request)
                except RpcBusy as exc:
                    assert (exc.status, exc.code) == (503, "rpc_busy") and 1 <= exc.retry_after <= 60
                    outcomes.append("busy")
                except AuthError as exc:
                    outcomes.append(exc.code)
            assert rpc_log.count("eth_getCode") == 3 and "eth_call" not in rpc_log
            with pytest.raises(RpcBusy):  # a real wallet's fresh digest needs an eth_call, which is not made
                await verifier.verify(_with_client(contract_signed(owner, wallet, chain_id), "x"))
            assert rpc_log.count("eth_call") == 0
            return outcomes
        finally:
            await redis.aclose()

    assert asyncio.run(run()) == ["signature_invalid"] * 3 + ["busy"] * 2
