// The operator API, from the dashboard's own origin: the API is served by
// the same collector, one level above /dashboard/ (so that a path prefix in
// front of the collector keeps working).

const KEY = 'asyncmesh.operatorToken';

export class AuthError extends Error {}

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

export function apiURL(path) {
  return new URL('../' + path, location.href.split('#')[0]).toString();
}

function headers(extra = {}) {
  return { Authorization: 'Bearer ' + token(), Accept: 'application/json', ...extra };
}

// api fetches path (relative to the API root) and returns its JSON; a
// non-2xx answer throws with the API's message (err.status), a 401 an
// AuthError.
export async function api(path, { method = 'GET', body, signal, okStatuses } = {}) {
  const init = { method, signal, cache: 'no-store', credentials: 'omit', headers: headers(), referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const resp = await fetch(apiURL(path), init);
  let data = null;
  try { data = await resp.json(); } catch { /* not JSON */ }
  if (resp.status === 401) throw new AuthError('the collector refused the operator token');
  const ok = okStatuses ? okStatuses.includes(resp.status) : resp.ok;
  if (!ok) {
    const err = new Error((data && data.message) || resp.status + ' ' + resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// readEvents reads a server-sent event stream with fetch (so that it can
// send the Authorization header), calling event(name, data) for each event
// with JSON data. With resume, it reconnects after the stream ends or
// fails, sending the last event id (Last-Event-ID); otherwise it returns
// when the stream ends. state('open' | 'retrying') reports the connection.
export async function readEvents(path, { signal, event, state = () => {}, resume = false }) {
  let last = '';
  let backoff = 1000;
  while (!signal.aborted) {
    try {
      const hs = headers({ Accept: 'text/event-stream' });
      if (last) hs['Last-Event-ID'] = last;
      const resp = await fetch(apiURL(path), { signal, headers: hs, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' });
      if (resp.status === 401) throw new AuthError('the collector refused the operator token');
      if (!resp.ok || !resp.body) throw new Error('stream: ' + resp.status);
      state('open');
      backoff = 1000;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let name = 'message', data = '', id = null;
          for (const line of block.split('\n')) {
            if (line === '' || line.startsWith(':')) continue;
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            const val = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
            if (field === 'event') name = val;
            else if (field === 'data') data += (data ? '\n' : '') + val;
            else if (field === 'id') id = val;
          }
          if (id !== null) last = id;
          if (data) {
            let parsed;
            try { parsed = JSON.parse(data); } catch { continue; }
            event(name, parsed);
          }
        }
        if (buf.length > 4 << 20) throw new Error('stream: an event over 4 MiB');
      }
      if (!resume) return;
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof AuthError) throw e;
      if (!resume) throw e;
    }
    state('retrying');
    await sleep(backoff, signal);
    backoff = Math.min(backoff * 2, 15000);
  }
}
