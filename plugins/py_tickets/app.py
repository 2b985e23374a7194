"""py_tickets: ticket helpers written in Python (componentize-py).

- ``normalize``: tidies a support ticket (subject, priority aliases, tags, email).
- ``sign``: HMAC-SHA256 of the normalised ticket with the granted secret ``signing_key``.
- ``check_status``: asks the configured status page over HTTP; its origin is not
  granted in plugin.toml, so the host refuses it (``http_denied``): the example of
  egress that is denied.
"""

import hashlib
import hmac
import json
import re

from casework_sdk import Plugin, config, http, invalid_input, log, secrets

plugin = Plugin()

PRIORITIES = {
    "p1": "urgent", "urgent": "urgent", "critical": "urgent",
    "p2": "high", "high": "high",
    "p3": "normal", "normal": "normal", "medium": "normal", "": "normal",
    "p4": "low", "low": "low",
}

TICKET = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "minLength": 1, "maxLength": 500},
        "priority": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "email": {"type": "string"},
    },
    "required": ["subject"],
    "additionalProperties": False,
}

NORMALIZED = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "priority": {"enum": ["low", "normal", "high", "urgent"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "email": {"type": ["string", "null"]},
    },
    "required": ["subject", "priority", "tags", "email"],
}


def normalized(ticket):
    subject = " ".join(ticket["subject"].split())
    if not subject:
        raise invalid_input("`input.subject` is blank")
    priority = PRIORITIES.get(ticket.get("priority", "").strip().lower())
    if priority is None:
        raise invalid_input("`input.priority` is not a known priority (p1-p4, low..urgent)")
    tags = sorted({re.sub(r"[^a-z0-9]+", "-", t.lower()).strip("-") for t in ticket.get("tags", [])} - {""})
    email = ticket.get("email", "").strip().lower() or None
    return {"subject": subject, "priority": priority, "tags": tags, "email": email}


@plugin.action("normalize", doc="Tidies a ticket: whitespace, priority aliases, tags, email.",
               input_schema=TICKET, output_schema=NORMALIZED)
def normalize(ticket, ctx):
    return normalized(ticket)


@plugin.action(
    "sign",
    doc="Normalises a ticket and signs it (HMAC-SHA256, hex) with the secret `signing_key`.",
    input_schema=TICKET,
    output_schema={
        "type": "object",
        "properties": {"ticket": NORMALIZED, "signature": {"type": "string"}},
        "required": ["ticket", "signature"],
    },
)
def sign(ticket, ctx):
    tidy = normalized(ticket)
    key = secrets.get("signing_key")
    canonical = json.dumps(tidy, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    signature = hmac.new(key.expose().encode(), canonical, hashlib.sha256).hexdigest()
    log.info(f"signed ticket for step {ctx.step_id}")
    return {"ticket": tidy, "signature": signature}


@plugin.action(
    "check_status",
    doc="Reads the status page at `status_url` (not granted: the host denies it).",
    input_schema={"type": "object", "additionalProperties": False},
    output_schema={"type": "object", "properties": {"status": {"type": "integer"}}},
)
def check_status(_input, ctx):
    response = http.get(config.get_or("status_url", "https://status.example.com/api/v2/status.json"))
    return {"status": response.status}


Actions = plugin.exports()
