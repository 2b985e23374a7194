// A fake host for unit tests under plain Node (`node --test`), no WebAssembly. It
// behaves like the engine's host: a secret not given is `secret_not_granted`, a request
// with no canned answer is `http_denied` naming it, canned answers per method and URL
// are served in order (the last one repeats), the clock is pinned to 2024-01-01.

import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { HttpError, PluginError, defaultContext, setHost } from './index.js';

export class FakeHost {
  constructor() {
    this.configs = new Map();
    this.secretValues = new Map();
    this.missing = new Set();
    this.answers = new Map();
    this.requests = [];
    this.logs = [];
    this.now = 1_704_067_200_000;
    setHost(this);
  }

  close() {
    setHost(null);
  }

  config(key, value) {
    this.configs.set(key, value);
    return this;
  }

  /** Loads the `[config]` table of a plugin.toml (flat `key = "value"` lines). */
  configFromManifest(path) {
    for (const [k, v] of Object.entries(readManifest(path).config ?? {})) this.configs.set(k, v);
    return this;
  }

  secret(name, value) {
    this.secretValues.set(name, value);
    return this;
  }

  missingSecret(name) {
    this.missing.add(name);
    return this;
  }

  respond(method, url, status, body = '', headers = []) {
    if (typeof body !== 'string' && !(body instanceof Uint8Array)) body = JSON.stringify(body);
    if (typeof body === 'string') body = new TextEncoder().encode(body);
    this.#queue(method, url).push([status, headers, body]);
    return this;
  }

  /** A transport failure: `timeout`, `connection`, `denied`, ... */
  fail(method, url, kind, detail = '') {
    this.#queue(method, url).push(new HttpError(kind, detail));
    return this;
  }

  setNowMs(ms) {
    this.now = ms;
    return this;
  }

  #queue(method, url) {
    const key = `${method.toLowerCase()} ${url}`;
    if (!this.answers.has(key)) this.answers.set(key, []);
    return this.answers.get(key);
  }

  /** Calls `action` through the same JSON decoding and encoding as the component. */
  invoke(plugin, action, input, ctx = defaultContext) {
    return JSON.parse(plugin.call(action, JSON.stringify(input), ctx));
  }

  /** Calls `action` expecting a PluginError, and returns it. */
  invokeError(plugin, action, input, ctx = defaultContext) {
    let out;
    try {
      out = plugin.call(action, JSON.stringify(input), ctx);
    } catch (e) {
      if (e instanceof PluginError) return e;
      throw e;
    }
    throw new Error(`\`${action}\` succeeded with ${out}`);
  }

  // the host interface
  configGet(key) {
    return this.configs.get(key);
  }
  secretGet(name) {
    if (this.missing.has(name)) throw new PluginError('secret_missing', `secret \`${name}\` is granted but not set`);
    if (!this.secretValues.has(name)) throw new PluginError('secret_not_granted', `secret \`${name}\` is not granted to this plugin`);
    return this.secretValues.get(name);
  }
  log(level, message) {
    this.logs.push([level, message]);
  }
  nowMs() {
    return this.now;
  }
  randomBytes(n) {
    return new Uint8Array(randomBytes(n));
  }
  httpSend(method, url, headers, body) {
    this.requests.push({ method, url, headers, body, header: (n) => headers.find(([k]) => k.toLowerCase() === n.toLowerCase())?.[1] });
    const queue = this.answers.get(`${method} ${url}`);
    if (!queue || queue.length === 0) throw new HttpError('denied', `no canned answer for ${method.toUpperCase()} ${url}`);
    const answer = queue.length > 1 ? queue.shift() : queue[0];
    if (answer instanceof HttpError) throw answer;
    return answer;
  }
}

/** Fails unless `actions` in plugin.toml equals the plugin's registered actions. */
export function assertManifestMatches(plugin, manifestPath) {
  const listed = readManifest(manifestPath).actions ?? [];
  const have = plugin.names();
  if ([...listed].sort().join() !== [...have].sort().join()) {
    throw new Error(`plugin.toml lists ${listed}, the plugin has ${have}`);
  }
}

/** Just enough TOML for plugin.toml: top-level and `[table]` keys with string or
 * string-array values, `#` comments. */
export function readManifest(path) {
  const out = {};
  let table = out;
  for (const raw of readFileSync(path, 'utf8').split('\n')) {
    const line = raw.replace(/^\s*#.*$/, '').trim();
    if (!line) continue;
    const header = line.match(/^\[([a-z_]+)\]$/);
    if (header) {
      table = out[header[1]] = {};
      continue;
    }
    const kv = line.match(/^([a-z_0-9]+)\s*=\s*(.+)$/);
    if (kv) table[kv[1]] = JSON.parse(kv[2]);
  }
  return out;
}
