// The component's entry module (what plugins/build.sh hands to componentize-js).
import '../../sdk/js/src/wasm.js';
import { plugin } from './app.js';

export const actions = plugin.exports();
