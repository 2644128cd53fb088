"""HSM port: PKCS#11 through python-pkcs11 (the only place that imports it)."""

from appliance.hsm.pkcs11_adapter import Curve, Hsm, KeyAttributes, KeySpec, PinRejected, check_keys

__all__ = ["Curve", "Hsm", "KeyAttributes", "KeySpec", "PinRejected", "check_keys"]
