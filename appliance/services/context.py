"""The appliance's wiring: settings, store, HSM and signers, built once per process (after any fork)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance import metrics
from appliance.config import Settings, apply_environment
from appliance.domain.merkle import LeafHashes
from appliance.domain.mint_rules import LogFacts
from appliance.hsm import Curve, Hsm, KeySpec
from appliance.services.outage import Outage
from appliance.services.token_state import TokenState
from appliance.signing import HsmSigner
from appliance.store.db import Database


@dataclass
class Appliance:
    settings: Settings
    db: Database
    hsm: Hsm
    clock: Callable[[], float] = time.time
    mint_signer: HsmSigner = field(init=False)
    attestation_signer: HsmSigner = field(init=False)
    audit_signer: HsmSigner = field(init=False)
    #: what the token holds so that the database cannot roll it back: the anchor and the heads
    token: TokenState = field(init=False)
    #: the audit log's leaf hashes with remembered subtrees (services.audit serves proofs from it), and its lock
    audit_tree: LeafHashes = field(default_factory=LeafHashes, init=False)
    audit_tree_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    #: what the verified entries say about mints (reservations, closures), gathered as they are hashed
    audit_facts: LogFacts = field(default_factory=LogFacts.empty, init=False)
    #: store writes that failed since the audit log last recorded an outage (services.lifecycle records it)
    store_outage: Outage = field(default_factory=Outage, init=False)
    #: the process's services (services.registry.of builds them once); untyped here to keep imports acyclic
    services: object = field(default=None, init=False)

    def __post_init__(self) -> None:
        h = self.settings.hsm
        self.mint_signer = HsmSigner(self.hsm, KeySpec(h.mint_key, Curve.SECP256K1))
        self.attestation_signer = HsmSigner(self.hsm, KeySpec(h.attestation_key, Curve.P256))
        self.audit_signer = HsmSigner(self.hsm, KeySpec(h.audit_key, Curve.ED25519))
        self.token = TokenState(self.hsm, h.policy_anchor, self.settings.data_dir / "token-state.lock", self.db,
                                key_label=h.mint_key)

    @property
    def key_specs(self) -> list[KeySpec]:
        return [self.mint_signer.spec, self.attestation_signer.spec, self.audit_signer.spec]

    @property
    def signers(self) -> list[HsmSigner]:
        return [self.mint_signer, self.attestation_signer, self.audit_signer]

    def now(self) -> int:
        return int(self.clock())


def build(settings: Settings, clock: Callable[[], float] = time.time) -> Appliance:
    """Wire the appliance for this process. Nothing touches the HSM until first use."""
    apply_environment(settings)
    hsm = Hsm(settings.hsm.module, settings.hsm.token_label, settings.hsm.pin)
    hsm.observer = metrics.observe_hsm
    db = Database(settings.storage_url, settings.storage_timeout_seconds)
    app = Appliance(settings=settings, db=db, hsm=hsm, clock=clock)

    def failed(operation: str) -> None:
        metrics.AUDIT_WRITE_FAILURES.labels(operation).inc()
        app.store_outage.note(operation, app.clock())

    db.on_failure = failed
    return app
