// asyncmesh operator dashboard. Plain ES modules, no framework, no build.
//
// The operator's bearer token is kept in sessionStorage (gone with the tab)
// and sent as Authorization on every fetch; it is never put in a URL. The
// operator's event stream is read with fetch (EventSource cannot send the
// header). Every datum is rendered as text (textContent), never as HTML.
import { h, clear, fmtTime, fmtDuration, badge, shortID } from './dom.js';
import { api, apiURL, token, setToken, readEvents, AuthError } from './api.js';

const STATUSES = ['persisted', 'queued', 'processing', 'completed', 'failed', 'delivering', 'held', 'delivered', 'dead'];
const PAGE = 50;
const main = document.getElementById('main');
const nav = document.getElementById('nav');
const signout = document.getElementById('signout');
const announcer = document.getElementById('announce');

let page = null; // the current page's AbortController: its fetches and streams end with it

function announce(msg) {
  announcer.textContent = '';
  setTimeout(() => { announcer.textContent = msg; }, 50);
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(qs || '') };
}

function route() {
  if (page) page.abort();
  page = new AbortController();
  const signal = page.signal;
  if (!token()) {
    nav.hidden = true; signout.hidden = true;
    return login();
  }
  nav.hidden = false; signout.hidden = false;
  const { parts, params } = parseHash();
  const name = parts[0] || 'requests';
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.page === (name === 'request' ? 'requests' : name)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const pages = { requests: requestLog, request: requestPage, endpoints: endpointsPage, replay: bulkReplayPage, rules: rulesPage };
  const render = pages[name] || notFound;
  clear(main);
  render(signal, parts.slice(1), params).catch((err) => showError(err, signal));
}

function showError(err, signal) {
  if (signal && signal.aborted) return;
  if (err instanceof AuthError) { setToken(''); route(); return; }
  main.append(h('p', { class: 'error', role: 'alert' }, 'Error: ' + err.message));
}

function heading(text) {
  const el = h('h1', { tabindex: '-1' }, text);
  main.append(el);
  el.focus({ preventScroll: true });
  return el;
}

function notFound() {
  heading('Not found');
  main.append(h('p', {}, 'No such page. ', h('a', { href: '#/requests' }, 'Go to the request log.')));
  return Promise.resolve();
}

// ---- login -----------------------------------------------------------------

function login(message) {
  clear(main);
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: '', spellcheck: 'false' });
  const err = h('p', { class: 'error', id: 'login-error', role: 'alert' }, message || '');
  const form = h('form', { class: 'card login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Operator sign-in'),
    h('p', { class: 'meta' }, 'The collector\'s operator token (-admin-token-env). It stays in this tab only.'),
    h('label', { for: 'token' }, 'Operator token'), input, err,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Sign in')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    setToken(input.value.trim());
    try {
      await api('v1/rules');
      if (!location.hash) history.replaceState(null, '', '#/requests');
      route();
    } catch (e) {
      setToken('');
      err.textContent = e instanceof AuthError ? 'The collector refused this token.' : 'Sign-in failed: ' + e.message;
      input.focus();
    }
  });
  main.append(form);
  input.focus();
  return Promise.resolve();
}

signout.addEventListener('click', () => { setToken(''); announce('Signed out'); route(); });

// ---- request log -----------------------------------------------------------

const FILTERS = [
  ['status', 'Status'], ['rule', 'Rule'], ['package', 'Package'], ['caller', 'Caller'], ['traceId', 'Trace id'],
  ['since', 'Created from'], ['until', 'Created before'],
];

// filterQuery turns the form's values into API parameters (times as RFC 3339).
function filterQuery(values, keys) {
  const q = new URLSearchParams();
  for (const k of keys) {
    let v = (values.get(k) || '').trim();
    if (!v) continue;
    if (k === 'since' || k === 'until') v = new Date(v).toISOString();
    q.set(k, v);
  }
  return q;
}

function filterForm(params, { statuses, live }) {
  const fields = FILTERS.map(([k, label]) => {
    const id = 'f-' + k;
    let input;
    if (k === 'status') {
      input = h('select', { id, name: k }, h('option', { value: '' }, statuses === STATUSES ? 'any' : statuses[0]),
        ...statuses.slice(statuses === STATUSES ? 0 : 1).map((s) => h('option', { value: s }, s)));
    } else if (k === 'since' || k === 'until') {
      input = h('input', { id, name: k, type: 'datetime-local', step: '1' });
    } else {
      input = h('input', { id, name: k, type: 'text', autocomplete: 'off', spellcheck: 'false' });
    }
    if (params.get(k)) input.value = params.get(k);
    return h('div', { class: k === 'since' || k === 'until' ? 'wide' : '' }, h('label', { for: id }, label), input);
  });
  const extra = [];
  if (live) {
    const box = h('input', { id: 'f-live', name: 'live', type: 'checkbox' });
    box.checked = params.get('live') !== 'off';
    extra.push(h('div', {}, h('label', { class: 'check', for: 'f-live' }, box, 'Live updates')));
  }
  return h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter requests' }, ...fields, ...extra,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Apply'), h('button', { type: 'reset', class: 'secondary' }, 'Clear')));
}

async function requestLog(signal, _parts, params) {
  heading('Requests');
  const form = filterForm(params, { statuses: STATUSES, live: true });
  const count = h('p', { class: 'meta', id: 'match-count' }, '');
  const liveState = h('span', { class: 'meta', id: 'live-state' }, '');
  main.append(h('div', { class: 'card' }, form), h('div', { class: 'pager' }, count, liveState));
  const tbody = h('tbody', { id: 'log-rows' });
  const table = h('table', { 'aria-describedby': 'match-count' },
    h('caption', { class: 'sr-only' }, 'Requests, newest first'),
    h('thead', {}, h('tr', {}, ...['Request', 'Status', 'Rule', 'Package', 'Caller', 'Created', 'Updated', 'Attempts'].map((t, i) =>
      h('th', { scope: 'col', class: i >= 3 && i !== 5 ? 'hide-narrow' : '' }, t)))),
    tbody);
  const newer = h('button', { type: 'button', class: 'secondary', id: 'page-newer' }, '← Newer');
  const older = h('button', { type: 'button', class: 'secondary', id: 'page-older' }, 'Older →');
  const where = h('span', { class: 'meta' }, '');
  main.append(h('div', { class: 'table-wrap' }, table), h('nav', { class: 'pager', 'aria-label': 'Pages' }, newer, older, where));

  const values = new URLSearchParams(params);
  const query = filterQuery(values, FILTERS.map((f) => f[0]));
  // The stream is not filtered by status: a row on the page whose request
  // leaves the filter (queued → delivered) must still be updated.
  const streamQuery = filterQuery(values, ['rule', 'package', 'caller', 'traceId']);
  const wanted = values.get('status') || '';
  const cursors = []; // the cursors of the pages before this one
  let cursor = '';
  let next = '';

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const fd = new FormData(form);
    const p = new URLSearchParams();
    for (const [k, v] of fd) if (k !== 'live' && String(v).trim()) p.set(k, String(v).trim());
    if (!fd.get('live')) p.set('live', 'off');
    location.hash = '#/requests' + (p.toString() ? '?' + p : '');
  });
  form.addEventListener('reset', () => {
    setTimeout(() => { if (location.hash === '#/requests') route(); else location.hash = '#/requests'; }, 0);
  });

  const countNow = async () => {
    try {
      const c = await api('v1/requests/count?' + query, { signal });
      count.textContent = c.count === 1 ? '1 request matches' : c.count.toLocaleString() + ' requests match';
    } catch (e) { if (!signal.aborted) count.textContent = 'count unavailable'; }
  };

  const load = async () => {
    const q = new URLSearchParams(query);
    q.set('order', 'desc'); q.set('limit', String(PAGE));
    if (cursor) q.set('cursor', cursor);
    const res = await api('v1/requests?' + q, { signal });
    clear(tbody);
    for (const rec of res.records) tbody.append(logRow(rec, false));
    if (res.records.length === 0) tbody.append(h('tr', { class: 'empty' }, h('td', { colspan: '8' }, 'No requests match.')));
    next = res.next || '';
    newer.disabled = cursors.length === 0;
    older.disabled = !next;
    where.textContent = 'Page ' + (cursors.length + 1);
  };
  newer.addEventListener('click', async () => { cursor = cursors.pop() || ''; await load().catch((e) => showError(e, signal)); announce('Page ' + (cursors.length + 1)); });
  older.addEventListener('click', async () => { cursors.push(cursor); cursor = next; await load().catch((e) => showError(e, signal)); announce('Page ' + (cursors.length + 1)); });

  await Promise.all([load(), countNow()]);

  if (params.get('live') === 'off' || values.get('until')) {
    liveState.textContent = values.get('until') ? 'Live updates off (a time range that ends)' : 'Live updates off';
    return;
  }
  // Changes that do not add a row (other pages, a status that leaves the
  // filter) move the count too: read it again now and then.
  const recounter = setInterval(countNow, 10000);
  signal.addEventListener('abort', () => clearInterval(recounter));
  const since = values.get('since') ? new Date(values.get('since')) : null;
  let recount = 0;
  let fresh = 0;
  readEvents('v1/stream?' + streamQuery, {
    signal,
    resume: true,
    state: (s) => { liveState.textContent = s === 'open' ? 'Live' : 'Live: reconnecting…'; },
    event: (name, rec) => {
      if (name !== 'record') return;
      const matches = !wanted || rec.status === wanted;
      const row = tbody.querySelector(`tr[data-id="${CSS.escape(rec.id)}"]`);
      if (row) {
        const now = logRow(rec, true);
        if (!matches) { // kept in place (the page does not shift), marked
          now.classList.add('left');
          now.title = `No longer ${wanted}: now ${rec.status}`;
        }
        row.replaceWith(now);
        return;
      }
      if (!matches || cursors.length > 0 || (since && new Date(rec.createdAt) < since)) return; // not on this page
      const rows = [...tbody.querySelectorAll('tr[data-id]')];
      const after = rows.find((r) => r.dataset.id < rec.id);
      if (!after && rows.length >= PAGE) return; // older than the page
      tbody.querySelector('tr.empty')?.remove();
      tbody.insertBefore(logRow(rec, true), after || null);
      const all = tbody.querySelectorAll('tr[data-id]');
      if (all.length > PAGE) { all[all.length - 1].remove(); next = all[all.length - 2].dataset.id; older.disabled = false; }
      fresh++;
      clearTimeout(recount);
      recount = setTimeout(() => {
        countNow();
        setTimeout(countNow, 2000); // Elasticsearch counts a write after its next refresh
        announce(fresh === 1 ? '1 new request' : fresh + ' new requests');
        fresh = 0;
      }, 1000);
    },
  }).catch((e) => showError(e, signal));
}

function logRow(rec, isFresh) {
  return h('tr', { 'data-id': rec.id, 'data-status': rec.status, class: isFresh ? 'fresh' : '' },
    h('td', {}, h('a', { href: '#/request/' + encodeURIComponent(rec.id), class: 'mono', title: rec.id }, shortID(rec.id))),
    h('td', {}, badge(rec.status)),
    h('td', {}, rec.rule),
    h('td', { class: 'hide-narrow' }, rec.package || ''),
    h('td', { class: 'hide-narrow' }, rec.caller || ''),
    h('td', {}, fmtTime(rec.createdAt)),
    h('td', { class: 'hide-narrow' }, fmtTime(rec.updatedAt)),
    h('td', { class: 'hide-narrow' }, String((rec.attempts || []).length)));
}

// ---- one request -----------------------------------------------------------

async function requestPage(signal, parts) {
  const id = parts[0] || '';
  heading('Request');
  const body = h('div', { id: 'request' });
  main.append(body);
  let rec = await api('v1/requests/' + encodeURIComponent(id), { signal });
  const draw = async () => {
    clear(body);
    const replay = h('button', { type: 'button', id: 'replay', class: 'danger' }, 'Replay callback');
    replay.disabled = !(rec.status === 'delivered' || rec.status === 'dead');
    replay.title = replay.disabled ? 'Only delivered or dead requests are replayed' : 'Deliver the stored result again';
    replay.addEventListener('click', async () => {
      replay.disabled = true;
      try {
        const r = await api('v1/requests/' + encodeURIComponent(id) + '/replay', { method: 'POST', signal });
        announce('Replay requested: the request is ' + r.status);
        watch();
      } catch (e) { announce('Replay failed: ' + e.message); replay.disabled = false; }
    });
    body.append(h('div', { class: 'actions' }, replay, h('a', { href: '#/requests' }, 'Back to the log')));
    const req = rec.request || {};
    body.append(h('div', { class: 'card' }, h('dl', { class: 'facts' },
      ...fact('Id', h('span', { class: 'mono', id: 'req-id' }, rec.id)),
      ...fact('Status', h('span', { id: 'req-status' }, badge(rec.status))),
      ...fact('Trace id', h('span', { class: 'mono', id: 'req-trace' }, rec.traceId)),
      ...fact('Rule', rec.rule),
      ...(rec.package ? fact('Package', rec.package) : []),
      ...(rec.caller ? fact('Caller', rec.caller) : []),
      ...(rec.principal ? fact('Principal', rec.principal) : []),
      ...fact('Request', h('span', { class: 'mono' }, `${req.method || ''} ${req.authority || ''}${req.path || ''}`)),
      ...fact('Callback', h('span', { class: 'mono' }, `${req.protocol || ''} ${req.callback || ''}`)),
      ...fact('Created', fmtTime(rec.createdAt)),
      ...fact('Updated', fmtTime(rec.updatedAt)),
      ...(rec.error ? fact('Error', h('span', { class: 'error' }, rec.error)) : []))));
    body.append(h('h2', {}, 'Status timeline'), timeline(rec));
    body.append(h('h2', { id: 'attempts-title' }, `Delivery attempts (${(rec.attempts || []).length})`), attemptsTable(rec.attempts || []));
    body.append(h('h2', {}, 'Stored response'));
    const resp = h('div', { id: 'stored-response' }, h('p', { class: 'meta' }, 'Loading…'));
    body.append(resp);
    try {
      const r = await api('v1/requests/' + encodeURIComponent(id) + '/result', { signal, okStatuses: [200, 202] });
      clear(resp);
      if (r.response) {
        const hs = Object.entries(r.response.headers || {}).map(([k, v]) => `${k}: ${v}`).join('\n');
        resp.append(h('p', {}, 'Status ', h('strong', {}, String(r.response.status)), r.response.bodyEncoding ? ` (body ${r.response.bodyEncoding})` : ''),
          h('details', {}, h('summary', {}, 'Headers'), h('pre', {}, hs || '(none)')),
          h('pre', { 'aria-label': 'Response body' }, r.response.body || '(empty body)'));
      } else if (r.error) {
        resp.append(h('p', { class: 'error' }, 'No response stored: ' + r.error));
      } else {
        resp.append(h('p', { class: 'meta' }, 'Not executed yet (' + r.status + ').'));
      }
    } catch (e) { if (!signal.aborted) { clear(resp); resp.append(h('p', { class: 'error' }, e.message)); } }
  };
  // watch follows the request's own event stream until it is delivered or dead.
  let watching = false;
  const watch = () => {
    if (watching) return;
    watching = true;
    readEvents('v1/requests/' + encodeURIComponent(id) + '/events', {
      signal,
      event: (name, r) => {
        if (name !== 'status' || r.updatedAt === rec.updatedAt) return;
        const was = rec.status;
        rec = r;
        if (r.status !== was) announce('The request is now ' + r.status);
        draw();
      },
    }).catch(() => {}).finally(() => { watching = false; });
  };
  await draw();
  if (!(rec.status === 'delivered' || rec.status === 'dead')) watch();
}

function fact(term, value) {
  return [h('dt', {}, term), h('dd', {}, value)];
}

function timeline(rec) {
  const hist = rec.history || [];
  const terminal = rec.status === 'delivered' || rec.status === 'dead';
  const spans = hist.map((t, i) => {
    const end = i + 1 < hist.length ? new Date(hist[i + 1].at) : terminal ? null : new Date();
    return end ? Math.max(0, end - new Date(t.at)) : null;
  });
  const longest = Math.max(1, ...spans.filter((s) => s !== null));
  return h('ol', { class: 'timeline card', 'aria-label': 'Status timeline' }, ...hist.map((t, i) => {
    const span = spans[i];
    const bar = h('span');
    bar.style.width = span === null ? '0' : Math.max(1, (100 * span) / longest) + '%';
    const label = span === null ? 'final' : fmtDuration(span) + (i + 1 === hist.length ? ' so far' : '');
    return h('li', {},
      h('span', {}, badge(t.status), t.event ? h('span', { class: 'meta' }, ' ' + t.event) : ''),
      h('div', { class: 'bar', role: 'img', 'aria-label': `${t.status}: ${label}` }, bar),
      h('span', { class: 'meta', title: t.at }, label));
  }));
}

function attemptsTable(attempts) {
  if (attempts.length === 0) return h('p', { class: 'meta', id: 'attempts' }, 'No delivery attempt yet.');
  return h('div', { class: 'table-wrap' }, h('table', { id: 'attempts', 'aria-labelledby': 'attempts-title' },
    h('thead', {}, h('tr', {}, ...['#', 'At', 'Answer', 'Latency', 'Error', 'Receiver\'s answer'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, ...attempts.map((a, i) => {
      const resp = a.response;
      const sent = a.request;
      const answer = resp ? resp.status : a.statusCode ? String(a.statusCode) : '—';
      const details = [];
      if (resp) {
        const hs = (resp.headers || []).map(([k, v]) => `${k}: ${v}`).join('\n');
        details.push(h('details', {}, h('summary', {}, 'Answer'),
          h('pre', {}, [resp.message, hs, resp.body ? '\n' + resp.body + (resp.bodyTruncated ? '\n[cut]' : '') : ''].filter(Boolean).join('\n'))));
      }
      if (sent) {
        const hs = (sent.headers || []).map(([k, v]) => `${k}: ${v}`).join('\n');
        details.push(h('details', {}, h('summary', {}, 'Sent'), h('pre', {}, `${sent.method} ${sent.url}\n${hs}\n(${sent.bodySize} bytes)`)));
      }
      return h('tr', {},
        h('td', {}, String(i + 1)), h('td', {}, fmtTime(a.at)), h('td', {}, answer),
        h('td', {}, a.latencyMs.toFixed(1) + ' ms'), h('td', { class: a.error ? 'error' : '' }, a.error || ''),
        h('td', {}, ...(details.length ? details : ['—'])));
    }))));
}

// ---- endpoints -------------------------------------------------------------

async function endpointsPage(signal, _parts, params) {
  heading('Endpoints');
  const onlyDisabled = h('input', { id: 'ep-disabled', type: 'checkbox' });
  onlyDisabled.checked = params.get('disabled') === 'true';
  onlyDisabled.addEventListener('change', () => { location.hash = '#/endpoints' + (onlyDisabled.checked ? '?disabled=true' : ''); });
  const held = h('p', { class: 'meta', id: 'held-count' }, '');
  main.append(h('div', { class: 'card actions' }, h('label', { class: 'check', for: 'ep-disabled' }, onlyDisabled, 'Disabled endpoints only'), held));
  const tbody = h('tbody');
  const more = h('button', { type: 'button', class: 'secondary', id: 'ep-more' }, 'More');
  main.append(h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { class: 'sr-only' }, 'Callback endpoints and their health'),
    h('thead', {}, h('tr', {}, ...['Endpoint', 'State', 'Success ratio', 'Attempts', 'Failing', 'Last success', 'Last failure', 'Action'].map((t) => h('th', { scope: 'col' }, t)))),
    tbody)), h('div', { class: 'pager' }, more));
  api('v1/requests/count?status=held', { signal }).then((c) => {
    held.textContent = `${c.count.toLocaleString()} deliveries held (all endpoints)`;
  }).catch(() => {});
  let after = '';
  const load = async () => {
    const q = new URLSearchParams({ limit: '50' });
    if (onlyDisabled.checked) q.set('disabled', 'true');
    if (after) q.set('after', after);
    let res;
    try {
      res = await api('v1/endpoints?' + q, { signal });
    } catch (e) {
      if (e.status === 404) { tbody.append(h('tr', {}, h('td', { colspan: '8' }, 'This store keeps no endpoint health.'))); more.hidden = true; return; }
      throw e;
    }
    for (const ep of res.endpoints) tbody.append(endpointRow(ep, signal));
    if (!tbody.firstChild) tbody.append(h('tr', {}, h('td', { colspan: '8' }, 'No endpoints yet.')));
    after = res.next || '';
    more.hidden = !after;
  };
  more.addEventListener('click', () => load().catch((e) => showError(e, signal)));
  await load();
}

function endpointRow(ep, signal) {
  const ratio = (100 * ep.successRatio).toFixed(1) + '%';
  const action = h('button', { type: 'button', class: ep.disabled ? '' : 'danger' }, ep.disabled ? 'Enable' : 'Disable');
  action.setAttribute('aria-label', (ep.disabled ? 'Enable ' : 'Disable ') + ep.url);
  const row = h('tr', { 'data-id': ep.id },
    h('td', {}, h('span', { class: 'mono' }, ep.url), h('br'), h('span', { class: 'meta' }, ep.protocol + (ep.caller ? ' · caller ' + ep.caller : ''))),
    h('td', {}, ep.disabled ? h('span', { class: 'badge s-dead' }, 'disabled') : h('span', { class: 'badge s-delivered' }, 'enabled'),
      ep.reason ? h('div', { class: 'meta' }, ep.reason) : '',
      ep.held !== undefined ? h('div', { class: 'meta held' }, `${ep.held.toLocaleString()} held`) : ''),
    h('td', {}, ratio), h('td', {}, String(ep.attempts)),
    h('td', {}, ep.consecutiveFailures ? `${ep.consecutiveFailures} in a row` + (ep.failingSince ? ' since ' + fmtTime(ep.failingSince) : '') : '—'),
    h('td', {}, fmtTime(ep.lastSuccess)), h('td', {}, fmtTime(ep.lastFailure)),
    h('td', {}, action));
  action.addEventListener('click', async () => {
    action.disabled = true;
    try {
      const res = await api(`v1/endpoints/${encodeURIComponent(ep.id)}/${ep.disabled ? 'enable' : 'disable'}`, { method: 'POST', signal });
      const next = endpointRow(res, signal);
      row.replaceWith(next);
      next.querySelector('button').focus();
      announce(`${ep.url} is now ${res.disabled ? 'disabled' : 'enabled'}`);
    } catch (e) { action.disabled = false; announce('Failed: ' + e.message); }
  });
  return row;
}

// ---- bulk replay -----------------------------------------------------------

async function bulkReplayPage(signal, _parts, params) {
  heading('Bulk replay');
  main.append(h('p', { class: 'meta' }, 'Deliver again the callbacks of every dead (or delivered) request a filter selects. First count, then confirm; the replay runs a page at a time.'));
  const form = filterForm(params, { statuses: ['dead', 'delivered'], live: false });
  form.setAttribute('aria-label', 'Filter the requests to replay');
  form.querySelector('button[type="submit"]').textContent = 'Count matching';
  const result = h('div', { id: 'replay-result', 'aria-live': 'polite' });
  main.append(h('div', { class: 'card' }, form), result);
  let running = null;
  const body = () => {
    const fd = new FormData(form);
    const b = {};
    for (const k of ['status', 'rule', 'package', 'caller', 'traceId']) if (String(fd.get(k) || '').trim()) b[k] = String(fd.get(k)).trim();
    for (const k of ['since', 'until']) if (fd.get(k)) b[k] = new Date(String(fd.get(k))).toISOString();
    return b;
  };
  form.addEventListener('reset', () => { clear(result); });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (running) return;
    clear(result);
    const filter = body();
    const { matched } = await api('v1/deliveries/replay', { method: 'POST', body: { ...filter, dryRun: true }, signal });
    const msg = h('p', { id: 'replay-count' }, h('strong', {}, matched.toLocaleString()),
      matched === 1 ? ` ${filter.status || 'dead'} request matches.` : ` ${filter.status || 'dead'} requests match.`);
    result.append(msg);
    if (matched === 0) return;
    const go = h('button', { type: 'button', class: 'danger', id: 'replay-start' }, `Replay ${matched.toLocaleString()} requests…`);
    result.append(go);
    go.addEventListener('click', () => {
      go.remove();
      const confirmBox = h('div', { class: 'notice', role: 'alertdialog', 'aria-labelledby': 'confirm-text', 'aria-modal': 'false' },
        h('p', { id: 'confirm-text' }, `Deliver the callbacks of ${matched.toLocaleString()} requests again? Receivers get each one once more (under the same webhook-id).`));
      const yes = h('button', { type: 'button', class: 'danger', id: 'replay-confirm' }, 'Yes, replay');
      const no = h('button', { type: 'button', class: 'secondary', id: 'replay-cancel' }, 'Cancel');
      confirmBox.append(h('div', { class: 'actions' }, yes, no));
      result.append(confirmBox);
      no.focus();
      no.addEventListener('click', () => { clear(result); announce('Replay cancelled'); form.querySelector('button[type="submit"]').focus(); });
      yes.addEventListener('click', async () => {
        confirmBox.remove();
        const progress = h('p', { id: 'replay-progress', role: 'status' }, 'Replaying…');
        const stop = h('button', { type: 'button', class: 'secondary' }, 'Stop');
        result.append(progress, stop);
        stop.focus();
        running = new AbortController();
        signal.addEventListener('abort', () => running && running.abort());
        stop.addEventListener('click', () => running.abort());
        let replayed = 0, skipped = 0, cursor = '';
        try {
          do {
            const res = await api('v1/deliveries/replay', { method: 'POST', body: { ...filter, limit: 100, cursor }, signal: running.signal });
            replayed += res.replayed.length; skipped += res.skipped.length;
            cursor = res.next || '';
            progress.textContent = `Replayed ${replayed.toLocaleString()}, skipped ${skipped.toLocaleString()} (moved on since the count)${cursor ? '…' : '.'}`;
          } while (cursor);
          progress.textContent = `Done: replayed ${replayed.toLocaleString()}, skipped ${skipped.toLocaleString()}.`;
        } catch (e) {
          progress.textContent = (running.signal.aborted ? 'Stopped' : 'Failed: ' + e.message) + ` after ${replayed.toLocaleString()} replayed.`;
        } finally {
          running = null;
          stop.remove();
        }
      });
    });
    go.focus();
  });
}

// ---- rules -----------------------------------------------------------------

async function rulesPage(signal) {
  heading('Rules');
  const res = await api('v1/rules', { signal });
  main.append(h('div', { class: 'card' }, h('dl', { class: 'facts' },
    ...fact('This collector', res.collector.node || '(no -node-id)'),
    ...fact('Rules version it applies', h('span', { class: 'mono' }, res.collector.version || '(none: no live rules)')),
    ...fact('Control plane', res.controlplane + (res.error ? ': ' + res.error : '')))));
  if (res.controlplane === 'not configured') {
    main.append(h('p', { class: 'notice' }, 'Start the collector with -controlplane-url to see each node\'s rules version.'));
    return;
  }
  // The state in a word, as the CLI's asyncmesh rules says it.
  const state = (n) => {
    if (!n.connected) return ['disconnected', 's-failed'];
    if (n.acked === n.served) return ['applied', 's-delivered'];
    if (n.nacks > 0 && n.lastNack) return ['refused', 's-dead'];
    return ['applying', 's-held'];
  };
  const rows = res.nodes.map((n) => {
    const [word, cls] = state(n);
    return h('tr', { 'data-node': String(n.node ?? '') },
      h('td', { class: 'mono' }, String(n.node ?? '')), h('td', {}, n.collector ? 'collector' : 'Envoy'), h('td', {}, String(n.cluster ?? '')),
      h('td', { class: 'mono' }, String(n.served ?? '')), h('td', { class: 'mono' }, String(n.acked ?? '')),
      h('td', {}, h('span', { class: 'badge ' + cls }, word)),
      h('td', {}, String(n.nacks ?? 0)), h('td', { class: n.lastNack ? 'error' : '' }, String(n.lastNack ?? '')),
      h('td', {}, n.connected ? 'yes' : 'no'));
  });
  main.append(h('div', { class: 'table-wrap' }, h('table', { id: 'nodes' },
    h('caption', { class: 'sr-only' }, 'Rules version per node'),
    h('thead', {}, h('tr', {}, ...['Node', 'Kind', 'Cluster', 'Served', 'Acknowledged', 'State', 'NACKs', 'Last NACK', 'Connected'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, ...(rows.length ? rows : [h('tr', {}, h('td', { colspan: '9' }, 'No nodes.'))])))));
}

window.addEventListener('hashchange', route);
route();
export { apiURL };
