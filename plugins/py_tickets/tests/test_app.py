"""Unit tests of py_tickets against the SDK's fake host (plain CPython, no wasm)."""

import hashlib
import hmac
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "../../../sdk/python")]

import app  # noqa: E402
from casework_sdk.testing import FakeHost, assert_manifest_matches  # noqa: E402


class Tickets(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost().config_from_manifest(os.path.join(HERE, "../plugin.toml"))
        self.addCleanup(self.host.close)

    def test_normalize_tidies_every_field(self):
        out = self.host.invoke(app.plugin, "normalize", {
            "subject": "  Refund   not\tarrived ", "priority": "P2",
            "tags": ["Billing", "billing ", "Refund!"], "email": " Ann@Example.COM ",
        })
        self.assertEqual(out, {"subject": "Refund not arrived", "priority": "high",
                               "tags": ["billing", "refund"], "email": "ann@example.com"})

    def test_bad_input_is_invalid_input_naming_the_field(self):
        err = self.host.invoke_error(app.plugin, "normalize", {"subject": "x", "colour": "red"})
        self.assertEqual((err.code, err.retryable), ("invalid_input", False))
        self.assertIn("colour", err.message)
        err = self.host.invoke_error(app.plugin, "normalize", {"subject": "x", "priority": "p9"})
        self.assertEqual(err.code, "invalid_input")

    def test_sign_uses_the_granted_secret(self):
        self.host.secret("signing_key", "k_test")
        out = self.host.invoke(app.plugin, "sign", {"subject": "Hi", "priority": "p1"})
        canonical = json.dumps(out["ticket"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        self.assertEqual(out["signature"], hmac.new(b"k_test", canonical, hashlib.sha256).hexdigest())
        self.assertEqual(self.host.logs, [("info", "signed ticket for step step-1")])

    def test_sign_without_the_secret_fails_with_its_code(self):
        err = self.host.invoke_error(app.plugin, "sign", {"subject": "Hi"})
        self.assertEqual(err.code, "secret_not_granted")

    def test_check_status_is_denied_without_a_grant(self):
        err = self.host.invoke_error(app.plugin, "check_status", {})
        self.assertEqual((err.code, err.retryable), ("http_denied", False))
        self.assertEqual(self.host.requests[0].url, "https://status.example.com/api/v2/status.json")

    def test_check_status_reports_the_status_when_answered(self):
        self.host.respond("get", "https://status.example.com/api/v2/status.json", 200, {})
        self.assertEqual(self.host.invoke(app.plugin, "check_status", {}), {"status": 200})

    def test_manifest_lists_the_actions(self):
        assert_manifest_matches(app.plugin, os.path.join(HERE, "../plugin.toml"))


if __name__ == "__main__":
    unittest.main()
