// pgid approval page: live updates over server-sent events, and a countdown per request.
// Requests already on the page keep their element (and any comment being typed); new ones are
// added, decided or expired ones leave. Live updates are shared between sessions and carry no
// CSRF token: this page's own goes into their forms.
'use strict';
(function () {
  const pending = document.getElementById('pending');
  const recent = document.getElementById('recent');
  const live = document.getElementById('live');
  const csrf = document.querySelector('main').dataset.csrf;

  function tick() {
    for (const el of document.querySelectorAll('[data-expires]')) {
      const s = Math.round((Date.parse(el.dataset.expires) - Date.now()) / 1000);
      if (s <= 0) { el.textContent = 'expired'; continue; }
      const pad = (n) => String(n).padStart(2, '0');
      el.textContent = s >= 3600
        ? `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m left`
        : `${Math.floor(s / 60)}m ${pad(s % 60)}s left`;
    }
  }

  function merge(html) {
    const next = document.createElement('div');
    next.innerHTML = html;
    for (const input of next.querySelectorAll('input[name=csrf]')) input.value = csrf;
    const incoming = [...next.querySelectorAll('article.request[data-id]')];
    if (incoming.length === 0) { pending.replaceChildren(...next.childNodes); return; }
    const keep = new Map([...pending.querySelectorAll('article.request[data-id]')]
      .map((el) => [el.dataset.id, el]));
    const list = incoming.map((el) => keep.get(el.dataset.id) || el);
    const note = next.querySelector('p.more');
    pending.replaceChildren(...(note ? [note] : []), ...list);
  }

  setInterval(tick, 1000);
  tick();
  // Opened from a request's link (/approvals/<id>): show that request.
  const linked = location.pathname.split('/')[2];
  const target = linked && document.getElementById('r-' + linked);
  if (target) { target.classList.add('linked'); target.scrollIntoView({ block: 'center' }); }
  if (!window.EventSource) return;
  const events = new EventSource('/approvals/events');
  events.addEventListener('update', (e) => {
    const u = JSON.parse(e.data);
    merge(u.pending);
    recent.innerHTML = u.recent;
    live.className = 'live on';
    live.textContent = 'live';
    tick();
  });
  events.addEventListener('signedout', () => {
    events.close();
    live.className = 'live off';
    live.textContent = 'signed out: reload to sign in';
  });
  events.onerror = () => {
    live.className = 'live off';
    live.textContent = 'reconnecting…';
  };
})();
