// Unit tests of js_tickets against the SDK's fake host (plain Node, no wasm).
import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { FakeHost, assertManifestMatches } from '../../../sdk/js/src/testing.js';
import { plugin } from '../app.js';

const manifest = fileURLToPath(new URL('../plugin.toml', import.meta.url));
let host;
beforeEach(() => {
  host = new FakeHost().configFromManifest(manifest);
});
afterEach(() => host.close());

test('normalize tidies every field', () => {
  const out = host.invoke(plugin, 'normalize', {
    subject: '  Refund   not\tarrived ', priority: 'P2', tags: ['Billing', 'billing ', 'Refund!'], email: ' Ann@Example.COM ',
  });
  assert.deepEqual(out, { subject: 'Refund not arrived', priority: 'high', tags: ['billing', 'refund'], email: 'ann@example.com' });
});

test('bad input is invalid_input naming the field', () => {
  let err = host.invokeError(plugin, 'normalize', { subject: 'x', colour: 'red' });
  assert.equal(err.code, 'invalid_input');
  assert.equal(err.retryable, false);
  assert.match(err.detail, /colour/);
  err = host.invokeError(plugin, 'normalize', { subject: 'x', priority: 'p9' });
  assert.equal(err.code, 'invalid_input');
});

test('sign uses the granted secret', () => {
  host.secret('signing_key', 'k_test');
  const out = host.invoke(plugin, 'sign', { subject: 'Hi', priority: 'p1' });
  const canonical = '{"email":null,"priority":"urgent","subject":"Hi","tags":[]}';
  assert.deepEqual(out.ticket, JSON.parse(canonical));
  assert.equal(out.signature, createHmac('sha256', 'k_test').update(canonical).digest('hex'));
  assert.deepEqual(host.logs, [['info', 'signed ticket for step step-1']]);
});

test('a long key and a long message sign like node:crypto', () => {
  host.secret('signing_key', 'k'.repeat(100));
  const subject = 'é'.repeat(200);
  const out = host.invoke(plugin, 'sign', { subject });
  const canonical = `{"email":null,"priority":"normal","subject":"${subject}","tags":[]}`;
  assert.equal(out.signature, createHmac('sha256', 'k'.repeat(100)).update(canonical).digest('hex'));
});

test('sign without the secret fails with its code', () => {
  assert.equal(host.invokeError(plugin, 'sign', { subject: 'Hi' }).code, 'secret_not_granted');
});

test('check_status is denied without a grant', () => {
  const err = host.invokeError(plugin, 'check_status', {});
  assert.equal(err.code, 'http_denied');
  assert.equal(err.retryable, false);
  assert.equal(host.requests[0].url, 'https://status.example.com/api/v2/status.json');
});

test('check_status reports the status when answered', () => {
  host.respond('get', 'https://status.example.com/api/v2/status.json', 200, {});
  assert.deepEqual(host.invoke(plugin, 'check_status', {}), { status: 200 });
});

test('manifest lists the actions', () => {
  assertManifestMatches(plugin, manifest);
});
