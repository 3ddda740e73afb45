"""Events-out settings from the environment (kept apart from config.py: only dispatching reads them)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, kw_only=True)
class HookSettings:
    retry_schedule: tuple[float, ...] = DEFAULT_SCHEDULE  # delays after attempts 1, 2, …; then it fails
    jitter: float = 0.2  # ± fraction of each delay
    timeout: float = 15.0  # seconds per attempt, wall clock, however many requests it makes
    retry_after_max: float = 3600.0  # a Retry-After beyond this is clamped
    circuit_failures: int = 5  # consecutive failures that open an endpoint's circuit
    circuit_recovery: float = 60.0  # seconds before a half-open probe
    disable_after: float = 5 * 24 * 3600.0  # failing this long disables the subscription
    lease_ttl: float = 30.0  # the per-subscription dispatch lease
    poll: float = 5.0  # fallback poll when no change notification arrives
    batch: int = 64  # deliveries sent per round per subscription (their results are written together)
    concurrency: int = 8  # requests in flight per subscription
    busy_pause: float = 0.5  # seconds between rounds while events stream in (not on a backlog)
    busy_rate: float = 200.0  # events per second (all kinds) from which a stream counts as busy
    github_min_interval: float = 0.75  # seconds between GitHub content-creating requests (≤ 80/min)
    allowed_networks: tuple[Network, ...] = field(default_factory=tuple)
    encryption_keys: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HookSettings:
        env = os.environ if env is None else env
        kw: dict[str, object] = {}
        raw = env.get("MATRIX_WEBHOOK_RETRY_SCHEDULE")
        if raw:
            kw["retry_schedule"] = tuple(_float("MATRIX_WEBHOOK_RETRY_SCHEDULE", p) for p in raw.split(","))
        for name, attr in (
            ("MATRIX_WEBHOOK_TIMEOUT", "timeout"),
            ("MATRIX_WEBHOOK_CIRCUIT_RECOVERY", "circuit_recovery"),
            ("MATRIX_WEBHOOK_LEASE_SECONDS", "lease_ttl"),
            ("MATRIX_WEBHOOK_POLL_SECONDS", "poll"),
            ("MATRIX_WEBHOOK_DISABLE_AFTER", "disable_after"),
            ("MATRIX_WEBHOOK_JITTER", "jitter"),
            ("MATRIX_GITHUB_MIN_INTERVAL", "github_min_interval"),
            ("MATRIX_WEBHOOK_BUSY_PAUSE", "busy_pause"),
            ("MATRIX_WEBHOOK_BUSY_RATE", "busy_rate"),
            ("MATRIX_WEBHOOK_BATCH", "batch"),
        ):
            if env.get(name):
                kw[attr] = _float(name, env[name])
        if "batch" in kw:
            kw["batch"] = max(1, int(float(str(kw["batch"]))))
        nets = env.get("MATRIX_WEBHOOK_ALLOWED_NETWORKS", "")
        try:
            kw["allowed_networks"] = tuple(
                ipaddress.ip_network(n.strip()) for n in nets.split(",") if n.strip()
            )
        except ValueError as exc:
            raise ValueError(f"MATRIX_WEBHOOK_ALLOWED_NETWORKS: {exc}") from None
        keys = env.get("MATRIX_ENCRYPTION_KEY", "")
        kw["encryption_keys"] = tuple(k.strip() for k in keys.split(",") if k.strip())
        return cls(**kw)  # type: ignore[arg-type]


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: not a number: {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: must not be negative")
    return value
