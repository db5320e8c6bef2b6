// DOM helpers: elements are built with textContent, never innerHTML, so no
// datum from the API can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === '') continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const el = document.createElement('time');
  el.dateTime = d.toISOString();
  el.textContent = d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  el.title = d.toISOString();
  return el;
}

export function fmtDuration(ms) {
  if (ms < 1) return (ms * 1000).toFixed(0) + ' µs';
  if (ms < 1000) return ms.toFixed(ms < 10 ? 1 : 0) + ' ms';
  const s = ms / 1000;
  if (s < 120) return s.toFixed(s < 10 ? 2 : 1) + ' s';
  const m = s / 60;
  if (m < 120) return m.toFixed(1) + ' min';
  return (m / 60).toFixed(1) + ' h';
}

export function badge(status) {
  return h('span', { class: 'badge s-' + String(status).replace(/[^a-z]/g, '') }, status);
}

// shortID shows the end of a UUIDv7 (its random part): its start is the
// time, the same for requests of one millisecond.
export function shortID(id) {
  return id.length > 13 ? '…' + id.slice(-12) : id;
}
