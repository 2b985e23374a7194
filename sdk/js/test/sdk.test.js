// The JavaScript SDK against its fake host: `node --test sdk/js/test/`.
import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Plugin, PluginError, config, http, log, retryable, secrets } from '../src/index.js';
import { FakeHost } from '../src/testing.js';

const SCHEMA = {
  type: 'object',
  properties: { id: { type: 'string', minLength: 1 }, n: { type: 'integer', minimum: 0 } },
  required: ['id'],
  additionalProperties: false,
};
const plugin = new Plugin().action('fetch', { doc: 'Fetches a thing.', inputSchema: SCHEMA, outputSchema: { type: 'object' } }, (input, ctx) => {
  const base = config.getOr('base_url', 'https://api.example.com');
  const key = secrets.get('api_key');
  const r = http.get(`${base}/things/${http.encodePathSegment(input.id)}`, {
    bearer: key.expose(),
    headers: { 'idempotency-key': ctx.idempotencyKey },
  });
  if (r.status === 429) throw retryable('rate_limited', 'slow down');
  log.info('fetched');
  return r.json();
});

let host;
beforeEach(() => {
  host = new FakeHost().secret('api_key', 'k_1');
});
afterEach(() => host.close());

test('a call sends the request and decodes the answer', () => {
  host.respond('get', 'https://api.example.com/things/a%2Fb', 200, { ok: true });
  const out = host.invoke(plugin, 'fetch', { id: 'a/b' }, { instanceId: 'i', stepId: 's', attempt: 1, idempotencyKey: 'k-7' });
  assert.deepEqual(out, { ok: true });
  assert.equal(host.requests[0].header('Authorization'), 'Bearer k_1');
  assert.equal(host.requests[0].header('idempotency-key'), 'k-7');
  assert.deepEqual(host.logs, [['info', 'fetched']]);
});

test('canned answers are served in order and the last repeats', () => {
  const url = 'https://api.example.com/things/x';
  host.respond('get', url, 429).respond('get', url, 200, { n: 1 });
  const err = host.invokeError(plugin, 'fetch', { id: 'x' });
  assert.deepEqual([err.code, err.retryable], ['rate_limited', true]);
  assert.deepEqual(host.invoke(plugin, 'fetch', { id: 'x' }), { n: 1 });
  assert.deepEqual(host.invoke(plugin, 'fetch', { id: 'x' }), { n: 1 });
});

test('transport failures map to the Rust SDK codes', () => {
  host.fail('get', 'https://api.example.com/things/x', 'timeout');
  let err = host.invokeError(plugin, 'fetch', { id: 'x' });
  assert.deepEqual([err.code, err.retryable], ['http_timeout', true]);
  err = host.invokeError(plugin, 'fetch', { id: 'other' });
  assert.deepEqual([err.code, err.retryable], ['http_denied', false]);
  host.respond('get', 'https://api.example.com/things/y', 200, 'not json');
  assert.equal(host.invokeError(plugin, 'fetch', { id: 'y' }).code, 'bad_response');
});

test('inputs are checked against the schema without quoting values', () => {
  for (const [bad, field] of [[{}, 'input.id'], [{ id: '' }, 'input.id'], [{ id: 'a', n: -1 }, 'input.n'], [{ id: 'a', n: '3' }, 'input.n'], [{ id: 'a', secret: 'hunter2' }, 'secret']]) {
    const err = host.invokeError(plugin, 'fetch', bad);
    assert.equal(err.code, 'invalid_input');
    assert.ok(err.detail.includes(field), err.detail);
    assert.ok(!err.detail.includes('hunter2'));
  }
  assert.equal(host.invokeError(plugin, 'nope', {}).code, 'unknown_action');
});

test('the export turns errors into the WIT plugin-error record', () => {
  const actions = plugin.exports();
  assert.deepEqual(actions.describe().map((d) => [d.name, JSON.parse(d.inputSchema)]), [['fetch', SCHEMA]]);
  assert.throws(() => actions.invoke('fetch', '{}', {}), (e) => e.code === 'invalid_input' && e.retryable === false && !(e instanceof Error));
});

test('secrets not given are not granted and print only their name', () => {
  host.missingSecret('other');
  assert.throws(() => secrets.get('nothing'), (e) => e instanceof PluginError && e.code === 'secret_not_granted');
  assert.throws(() => secrets.get('other'), (e) => e.code === 'secret_missing');
  assert.equal(String(secrets.get('api_key')), 'Secret(api_key)');
  assert.equal(JSON.stringify({ s: secrets.get('api_key') }), '{"s":"Secret(api_key)"}');
  assert.throws(() => config.require('base_url'), (e) => e.code === 'config_missing');
});

test('without a host calls say how to get one', () => {
  host.close();
  assert.throws(() => config.get('x'), /FakeHost/);
});
