// js_tickets: the py_tickets actions written in JavaScript (componentize-js).
//
// - `normalize`: tidies a support ticket (subject, priority aliases, tags, email).
// - `sign`: HMAC-SHA256 of the normalised ticket with the granted secret `signing_key`.
// - `check_status`: asks the configured status page over HTTP; its origin is not
//   granted in plugin.toml, so the host refuses it (`http_denied`).

import { Plugin, config, http, invalidInput, log, secrets } from '../../sdk/js/src/index.js';
import { hmacSha256Hex } from './hmac.js';

export const plugin = new Plugin();

const PRIORITIES = {
  p1: 'urgent', urgent: 'urgent', critical: 'urgent',
  p2: 'high', high: 'high',
  p3: 'normal', normal: 'normal', medium: 'normal', '': 'normal',
  p4: 'low', low: 'low',
};

const TICKET = {
  type: 'object',
  properties: {
    subject: { type: 'string', minLength: 1, maxLength: 500 },
    priority: { type: 'string' },
    tags: { type: 'array', items: { type: 'string' } },
    email: { type: 'string' },
  },
  required: ['subject'],
  additionalProperties: false,
};

const NORMALIZED = {
  type: 'object',
  properties: {
    subject: { type: 'string' },
    priority: { enum: ['low', 'normal', 'high', 'urgent'] },
    tags: { type: 'array', items: { type: 'string' } },
    email: { type: ['string', 'null'] },
  },
  required: ['subject', 'priority', 'tags', 'email'],
};

function normalized(ticket) {
  const subject = ticket.subject.split(/\s+/).filter(Boolean).join(' ');
  if (!subject) throw invalidInput('`input.subject` is blank');
  const priority = PRIORITIES[(ticket.priority ?? '').trim().toLowerCase()];
  if (priority === undefined) throw invalidInput('`input.priority` is not a known priority (p1-p4, low..urgent)');
  const tags = [...new Set((ticket.tags ?? []).map((t) => t.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '')))]
    .filter(Boolean)
    .sort();
  const email = (ticket.email ?? '').trim().toLowerCase() || null;
  return { subject, priority, tags, email };
}

// Keys sorted, no spaces: the same bytes as Python's json.dumps(sort_keys=True, separators=(",", ":")).
const canonical = (v) =>
  Array.isArray(v)
    ? `[${v.map(canonical).join(',')}]`
    : v !== null && typeof v === 'object'
      ? `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`
      : JSON.stringify(v);

plugin.action(
  'normalize',
  { doc: 'Tidies a ticket: whitespace, priority aliases, tags, email.', inputSchema: TICKET, outputSchema: NORMALIZED },
  (ticket) => normalized(ticket),
);

plugin.action(
  'sign',
  {
    doc: 'Normalises a ticket and signs it (HMAC-SHA256, hex) with the secret `signing_key`.',
    inputSchema: TICKET,
    outputSchema: {
      type: 'object',
      properties: { ticket: NORMALIZED, signature: { type: 'string' } },
      required: ['ticket', 'signature'],
    },
  },
  (ticket, ctx) => {
    const tidy = normalized(ticket);
    const key = secrets.get('signing_key');
    const signature = hmacSha256Hex(key.expose(), canonical(tidy));
    log.info(`signed ticket for step ${ctx.stepId}`);
    return { ticket: tidy, signature };
  },
);

plugin.action(
  'check_status',
  {
    doc: 'Reads the status page at `status_url` (not granted: the host denies it).',
    inputSchema: { type: 'object', additionalProperties: false },
    outputSchema: { type: 'object', properties: { status: { type: 'integer' } } },
  },
  () => ({ status: http.get(config.getOr('status_url', 'https://status.example.com/api/v2/status.json')).status }),
);
