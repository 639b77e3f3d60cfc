"""betstream producer library: the wire contract v1, signing, and a Redis client.

Upstream Python services use this package to build, sign and enqueue intents; services
in other languages follow docs/wire-contract.md (the same rules, stated without code).
"""

from producer.contract import BetIntent, DepositIntent, Intent, SettleIntent, WithdrawalIntent
from producer.errors import BetstreamError, ContractError, ForbiddenKind, KeyringError

__all__ = [
    "BetIntent",
    "BetstreamError",
    "ContractError",
    "DepositIntent",
    "ForbiddenKind",
    "Intent",
    "KeyringError",
    "SettleIntent",
    "WithdrawalIntent",
]
