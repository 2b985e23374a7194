"""The Python SDK against its fake host: `python3 -m unittest discover -s sdk/python/tests`."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from casework_sdk import Context, Plugin, PluginError, config, http, log, retryable, secrets  # noqa: E402
from casework_sdk.testing import FakeHost, describe  # noqa: E402

plugin = Plugin()
SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "string", "minLength": 1}, "n": {"type": "integer", "minimum": 0}},
    "required": ["id"],
    "additionalProperties": False,
}


@plugin.action("fetch", doc="Fetches a thing.", input_schema=SCHEMA, output_schema={"type": "object"})
def fetch(input, ctx):
    base = config.get_or("base_url", "https://api.example.com")
    key = secrets.get("api_key")
    r = http.get(f"{base}/things/{http.encode_path_segment(input['id'])}", bearer=key.expose(),
                 headers={"idempotency-key": ctx.idempotency_key})
    if r.status == 429:
        raise retryable("rate_limited", "slow down")
    log.info("fetched")
    return r.json()


Actions = plugin.exports()


class Sdk(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost().secret("api_key", "k_1")
        self.addCleanup(self.host.close)

    def test_a_call_sends_the_request_and_decodes_the_answer(self):
        self.host.respond("get", "https://api.example.com/things/a%2Fb", 200, {"ok": True})
        out = self.host.invoke(plugin, "fetch", {"id": "a/b"}, Context(idempotency_key="k-7"))
        self.assertEqual(out, {"ok": True})
        sent = self.host.requests[0]
        self.assertEqual(sent.header("Authorization"), "Bearer k_1")
        self.assertEqual(sent.header("idempotency-key"), "k-7")
        self.assertEqual(self.host.logs, [("info", "fetched")])

    def test_canned_answers_are_served_in_order_and_the_last_repeats(self):
        url = "https://api.example.com/things/x"
        self.host.respond("get", url, 429).respond("get", url, 200, {"n": 1})
        err = self.host.invoke_error(plugin, "fetch", {"id": "x"})
        self.assertEqual((err.code, err.retryable), ("rate_limited", True))
        self.assertEqual(self.host.invoke(plugin, "fetch", {"id": "x"}), {"n": 1})
        self.assertEqual(self.host.invoke(plugin, "fetch", {"id": "x"}), {"n": 1})

    def test_transport_failures_map_to_the_rust_sdks_codes(self):
        url = "https://api.example.com/things/x"
        self.host.fail("get", url, "timeout")
        err = self.host.invoke_error(plugin, "fetch", {"id": "x"})
        self.assertEqual((err.code, err.retryable), ("http_timeout", True))
        err = self.host.invoke_error(plugin, "fetch", {"id": "other"})
        self.assertEqual((err.code, err.retryable), ("http_denied", False))
        self.host.respond("get", "https://api.example.com/things/y", 200, "not json")
        self.assertEqual(self.host.invoke_error(plugin, "fetch", {"id": "y"}).code, "bad_response")

    def test_inputs_are_checked_against_the_schema_without_quoting_values(self):
        for bad, field in [({}, "input.id"), ({"id": ""}, "input.id"), ({"id": "a", "n": -1}, "input.n"),
                           ({"id": "a", "n": "3"}, "input.n"), ({"id": "a", "secret": "hunter2"}, "secret")]:
            err = self.host.invoke_error(plugin, "fetch", bad)
            self.assertEqual(err.code, "invalid_input", bad)
            self.assertIn(field, err.message)
            self.assertNotIn("hunter2", err.message)
        self.assertEqual(self.host.invoke_error(plugin, "nope", {}).code, "unknown_action")

    def test_secrets_not_given_are_not_granted_and_print_only_their_name(self):
        self.host.missing_secret("other")
        with self.assertRaises(PluginError) as e:
            secrets.get("nothing")
        self.assertEqual(e.exception.code, "secret_not_granted")
        with self.assertRaises(PluginError) as e:
            secrets.get("other")
        self.assertEqual(e.exception.code, "secret_missing")
        self.assertEqual(repr(secrets.get("api_key")), "Secret(api_key)")
        self.assertEqual(config.get("base_url"), None)
        with self.assertRaises(PluginError) as e:
            config.require("base_url")
        self.assertEqual(e.exception.code, "config_missing")

    def test_describe_gives_json_schemas(self):
        [info] = describe(plugin)
        self.assertEqual((info["name"], info["input_schema"]), ("fetch", SCHEMA))
        json.loads(plugin.describe()[0]["output_schema"])

    def test_without_a_host_calls_say_how_to_get_one(self):
        self.host.close()
        with self.assertRaises(RuntimeError) as e:
            config.get("x")
        self.assertIn("FakeHost", str(e.exception))


if __name__ == "__main__":
    unittest.main()
