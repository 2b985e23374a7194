// Imported (for its effect) by a component's entry module: routes the SDK's host
// calls to the component's `casework:plugin@0.1.0` imports. Never imported under Node.

import * as clock from 'casework:plugin/clock@0.1.0';
import * as config from 'casework:plugin/config@0.1.0';
import * as http from 'casework:plugin/http@0.1.0';
import * as log from 'casework:plugin/log@0.1.0';
import * as random from 'casework:plugin/random@0.1.0';
import * as secrets from 'casework:plugin/secrets@0.1.0';
import { HttpError, PluginError, setHost } from './index.js';

// A failed import call throws an error whose `payload` is the result's `err` value.
const payload = (e) => (e && e.payload !== undefined ? e.payload : e);

setHost({
  configGet: (key) => config.get(key),
  secretGet(name) {
    try {
      return secrets.get(name);
    } catch (e) {
      const kind = payload(e);
      if (kind === 'not-granted') throw new PluginError('secret_not_granted', `secret \`${name}\` is not granted to this plugin`);
      if (kind === 'not-found') throw new PluginError('secret_missing', `secret \`${name}\` is granted but not set`);
      throw new PluginError('secret_store_unavailable', `secret \`${name}\`: store unavailable`, true);
    }
  },
  log: (level, message) => log.log(level, message),
  nowMs: () => Number(clock.nowMs()),
  randomBytes: (n) => random.getBytes(n),
  httpSend(method, url, headers, body) {
    let r;
    try {
      r = http.send({ method, url, headers, body });
    } catch (e) {
      const v = payload(e);
      const kind = String(v && v.tag ? v.tag : v).replace(/-/g, '_');
      throw new HttpError(kind in KINDS ? kind : 'connection', v && v.val !== undefined ? v.val : '');
    }
    return [r.status, r.headers, r.body];
  },
});

const KINDS = { denied: 1, invalid_request: 1, timeout: 1, connection: 1, response_too_large: 1 };
