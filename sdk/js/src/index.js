// Casework plugins in JavaScript: typed actions over the `casework:plugin@0.1.0` world.
//
//   import { Plugin, PluginError, http, secrets, log } from '../../sdk/js/src/index.js';
//   export const plugin = new Plugin();
//   plugin.action('greet', { doc, inputSchema, outputSchema }, (input, ctx) => ({ ... }));
//
// The component's entry module imports `sdk/js/src/wasm.js` (which routes host calls
// to the component's imports) and exports `actions = plugin.exports()`. Anywhere else
// (`node --test`) host calls go to `FakeHost` from `testing.js`. No dependencies.

import { validate } from './schema.js';

let host = null;

/** Routes host calls to `backend` (`null`: none). Used by wasm.js and FakeHost. */
export function setHost(backend) {
  host = backend;
}

function backend() {
  if (host === null) {
    throw new Error('no Casework host here: outside a component, create a FakeHost first');
  }
  return host;
}

/** An action's failure: stable snake_case `code`, `message` for humans (never secrets). */
export class PluginError extends Error {
  constructor(code, message, retryable = false) {
    super(`${code}: ${message}`);
    this.code = code;
    this.detail = message;
    this.retryable = retryable;
  }
}

/** A failure the same call with the same idempotency key may fix (timeouts, 429, 5xx). */
export const retryable = (code, message) => new PluginError(code, message, true);
/** A failure a retry cannot fix. */
export const permanent = (code, message) => new PluginError(code, message, false);
/** Input the action rejects after the schema check. */
export const invalidInput = (message) => new PluginError('invalid_input', message, false);

/** The context of a test call (the host passes the real one). */
export const defaultContext = Object.freeze({
  instanceId: 'inst-1',
  stepId: 'step-1',
  attempt: 1,
  idempotencyKey: 'inst-1:step-1',
});

export class Plugin {
  constructor() {
    this.actions = new Map();
  }

  /** Registers `fn(input, ctx) -> output` as action `name`; input is checked against
   * `inputSchema` first (a mismatch is `invalid_input` naming the field, not the value). */
  action(name, { doc, inputSchema, outputSchema }, fn) {
    if (this.actions.has(name)) throw new Error(`action \`${name}\` registered twice`);
    this.actions.set(name, { name, doc, inputSchema, outputSchema, fn });
    return this;
  }

  names() {
    return [...this.actions.keys()];
  }

  describe() {
    return [...this.actions.values()].map((a) => ({
      name: a.name,
      doc: a.doc,
      inputSchema: JSON.stringify(a.inputSchema),
      outputSchema: JSON.stringify(a.outputSchema),
    }));
  }

  /** One call from JSON to JSON; throws PluginError. */
  call(action, inputJson, ctx) {
    const found = this.actions.get(action);
    if (!found) throw new PluginError('unknown_action', `no action named \`${action}\``);
    let value;
    try {
      value = JSON.parse(inputJson);
    } catch (e) {
      throw new PluginError('invalid_input', 'the input is not JSON');
    }
    const problem = validate(value, found.inputSchema, 'input');
    if (problem) throw new PluginError('invalid_input', problem);
    return JSON.stringify(found.fn(value, ctx));
  }

  /** The `actions` export for componentize-js: `export const actions = plugin.exports()`. */
  exports() {
    const plugin = this;
    return {
      describe: () => plugin.describe(),
      invoke(action, input, ctx) {
        try {
          return plugin.call(action, input, ctx);
        } catch (e) {
          // componentize-js turns a thrown value into the result's `err` case.
          if (e instanceof PluginError) {
            throw { code: e.code, message: e.detail, retryable: e.retryable };
          }
          const what = `${e && e.name ? e.name : 'Error'}: ${e && e.message ? e.message : e}`;
          throw { code: 'plugin_failed', message: what.slice(0, 500), retryable: false };
        }
      },
    };
  }
}

/** A secret: `String(s)` and JSON show only its name; `expose()` gives the value. */
export class Secret {
  #value;
  constructor(name, value) {
    this.name = name;
    this.#value = value;
  }
  expose() {
    return this.#value;
  }
  toString() {
    return `Secret(${this.name})`;
  }
  toJSON() {
    return this.toString();
  }
}

export const config = {
  get: (key) => backend().configGet(key),
  getOr: (key, fallback) => backend().configGet(key) ?? fallback,
  require(key) {
    const value = backend().configGet(key);
    if (value === undefined) throw new PluginError('config_missing', `config key \`${key}\` is not set`);
    return value;
  },
};

export const secrets = {
  /** The granted secret; `secret_not_granted`, `secret_missing` or
   * `secret_store_unavailable` (retryable) otherwise. */
  get: (name) => new Secret(name, backend().secretGet(name)),
};

export const log = Object.fromEntries(
  ['trace', 'debug', 'info', 'warn', 'error'].map((level) => [level, (msg) => backend().log(level, String(msg))]),
);

export const clock = { nowMs: () => backend().nowMs() };
export const random = { bytes: (n) => backend().randomBytes(n) };

const HTTP_TEXT = {
  denied: (d) => `request denied by the host: ${d}`,
  invalid_request: (d) => `invalid request: ${d}`,
  timeout: () => 'timed out waiting for the response',
  connection: (d) => `connection failed: ${d}`,
  response_too_large: () => "response body exceeds the host's size limit",
};

/** A request that did not complete: code `http_<kind>`; timeouts and connection
 * failures are retryable, as in the Rust SDK. */
export class HttpError extends PluginError {
  constructor(kind, detail = '') {
    super(`http_${kind}`, HTTP_TEXT[kind](detail), kind === 'timeout' || kind === 'connection');
    this.kind = kind;
  }
}

export class Response {
  constructor(status, headers, body) {
    this.status = status;
    this.headers = headers;
    this.body = body;
  }
  header(name) {
    const found = this.headers.find(([k]) => k.toLowerCase() === name.toLowerCase());
    return found ? found[1] : undefined;
  }
  text() {
    return new TextDecoder().decode(this.body);
  }
  json() {
    try {
      return JSON.parse(this.text());
    } catch {
      throw new PluginError('bad_response', 'the response body is not JSON');
    }
  }
}

function request(method, url, { headers = [], body = new Uint8Array(), json, bearer } = {}) {
  const pairs = Array.isArray(headers) ? [...headers] : Object.entries(headers);
  if (json !== undefined) {
    body = new TextEncoder().encode(JSON.stringify(json));
    pairs.push(['content-type', 'application/json']);
  } else if (typeof body === 'string') {
    body = new TextEncoder().encode(body);
  }
  if (bearer !== undefined) pairs.push(['authorization', `Bearer ${bearer}`]);
  const [status, got, data] = backend().httpSend(method, url, pairs, body);
  return new Response(status, got, data);
}

/** Outbound HTTP through the host; only origins granted in plugin.toml are reached. */
export const http = {
  request,
  get: (url, opts) => request('get', url, opts),
  post: (url, opts) => request('post', url, opts),
  put: (url, opts) => request('put', url, opts),
  patch: (url, opts) => request('patch', url, opts),
  delete: (url, opts) => request('delete', url, opts),
  encodePathSegment: (s) => encodeURIComponent(s),
};
