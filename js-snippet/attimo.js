/* Attimo website snippet. Plain JS, served as is at /v1/snippet.js.
   Config: data-* attributes on this <script> tag (see js-snippet/README.md). */
(function (w, d) {
  'use strict';
  if (w.attimo && w.attimo.loaded) return;
  var me = d.currentScript || d.querySelector('script[src*="snippet.js"]') || {};
  var cfg = me.dataset || {};
  var key = cfg.key || '';
  var api = (cfg.api || (me.src ? new URL(me.src).origin : location.origin)).replace(/\/$/, '');
  var budget = +cfg.budget || 300;
  var ls = null;
  try { ls = w.localStorage; } catch (e) {}
  var P = 'attimo_';
  function get(k) { try { return ls && ls.getItem(P + k); } catch (e) { return null; } }
  function set(k, v) {
    if (!consented) return;
    try { v == null ? ls.removeItem(P + k) : ls.setItem(P + k, v); } catch (e) {}
  }
  function uid() {
    var a = new Uint8Array(12);
    crypto.getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return (b + 256).toString(16).slice(1); }).join('');
  }
  // A refusal is remembered ('0') in every mode: a page load must not start again.
  var consented = cfg.consent !== 'required' ? get('consent') !== '0' : get('consent') === '1';
  var aid = null, userId = null, userSig = null;
  var outbox = [], timer = 0, sending = false, tries = 0, view = 0, solo = 0;

  function start() {
    aid = get('aid') || uid();
    set('aid', aid);
    userId = get('uid');
    userSig = get('sig');
    try { outbox = JSON.parse(get('outbox') || '[]'); } catch (e) { outbox = []; }
  }

  function event(type, props, extra) {
    if (!consented) return;
    var e = { id: uid(), type: type, anonymous_id: aid, ts: Date.now(), properties: props || {} };
    if (userId) { e.user_id = userId; e.user_sig = userSig; }
    for (var k in extra) e[k] = extra[k];
    outbox.push(e);
    save();
    schedule(200);
  }
  function save() { set('outbox', JSON.stringify(outbox.slice(0, 500))); }
  function schedule(ms) { if (!timer) timer = setTimeout(flush, ms); }

  // Batches leave as text/plain (a "simple" request: no CORS preflight); the
  // same ids go again on retry and the server drops what it has seen.
  function flush() {
    timer = 0;
    if (sending || !outbox.length) return;
    // After a refused batch, events go one by one: one bad event never sinks others.
    var batch = outbox.slice(0, solo ? 1 : 100);
    sending = true;
    post('/v1/events', { events: batch }).then(function (r) {
      if (r.status >= 500 || r.status == 429) throw 0;
      if (solo) solo--;
      if (r.status >= 400 && batch.length > 1) { solo = batch.length; return; }
      var ids = {};
      batch.forEach(function (e) { ids[e.id] = 1; });
      outbox = outbox.filter(function (e) { return !ids[e.id]; });
      save();
      tries = 0;
    }).catch(function () {
      tries++;
    }).then(function () {
      sending = false;
      if (outbox.length) schedule(tries ? Math.min(30000, 500 * Math.pow(2, tries)) : 0);
    });
  }
  function post(path, body) {
    return fetch(api + path + '?key=' + encodeURIComponent(key), {
      method: 'POST', body: JSON.stringify(body), keepalive: true,
      headers: { 'Content-Type': 'text/plain' }, credentials: 'omit'
    });
  }
  w.addEventListener('pagehide', function () {
    if (outbox.length && navigator.sendBeacon) {
      navigator.sendBeacon(api + '/v1/events?key=' + encodeURIComponent(key),
        new Blob([JSON.stringify({ events: outbox.slice(0, 100) })], { type: 'text/plain' }));
    }
  });

  // Page properties from <html data-attimo-category="crm" data-attimo-page-type="pricing">.
  function pageProps() {
    var o = {}, ds = d.documentElement.dataset;
    for (var k in ds) {
      if (k.indexOf('attimo') == 0 && k.length > 6) {
        o[k.slice(6).replace(/[A-Z]/g, function (c) { return '_' + c.toLowerCase(); }).slice(1)] = ds[k];
      }
    }
    return o;
  }

  // One page view: a page_view event and ONE decide for every slot on the page.
  function pageView() {
    if (!consented) return;
    var n = ++view;
    var props = pageProps();
    props.path = location.pathname;
    props.url = location.href;
    props.referrer = d.referrer;
    event('page_view', props);
    var slots = d.querySelectorAll('[data-attimo-slot]'), names = [];
    slots.forEach(function (s) {
      var name = s.getAttribute('data-attimo-slot');
      if (names.indexOf(name) < 0) names.push(name);
    });
    if (!names.length) return;
    var late = false, t = setTimeout(function () { late = true; }, budget);
    var ctx = { path: location.pathname, device: matchMedia('(max-width: 767px)').matches ? 'mobile' : 'desktop' };
    if (props.category) ctx.category = props.category;
    var body = { anonymous_id: aid, placements: names.slice(0, 20), context: ctx };
    if (userId) { body.user_id = userId; body.user_sig = userSig; }
    var who = userId;
    post('/v1/decide', body).then(function (r) {
      if (r.status == 403 && who && who == userId) forget(); // a refused signature is dropped
      return r.json();
    }).then(function (a) {
      clearTimeout(t);
      // Past the budget the default content stays for good.
      if (late || n != view || !a.placements) return;
      slots.forEach(function (s) {
        var o = a.placements[s.getAttribute('data-attimo-slot')];
        if (o) fill(s, o, a.decision_id);
      });
    }).catch(function () {});
  }

  // Catalog content rendered as written, through DOM text nodes only: any
  // value (personal or not) is text, never markup.
  function el(tag, cls, text) {
    var e = d.createElement(tag);
    e.className = 'attimo-' + cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  function safeUrl(u) {
    try { var x = new URL(String(u), location.href); return /^https?:$/.test(x.protocol) ? x.href : null; }
    catch (e) { return null; }
  }
  function fill(slot, o, decision) {
    var c = o.content || {}, box = el('div', 'offer attimo-' + o.kind);
    if (c.image && safeUrl(c.image)) { var i = el('img', 'image'); i.src = safeUrl(c.image); i.alt = c.alt || ''; box.appendChild(i); }
    if (c.title != null) box.appendChild(el('strong', 'title', c.title));
    if (c.body != null) box.appendChild(el('p', 'body', c.body));
    if (c.code != null) box.appendChild(el('code', 'code', c.code));
    var cta = c.cta || (c.link ? { href: c.link, label: c.link_label } : null);
    if (cta && safeUrl(cta.href)) { var a = el('a', 'cta', cta.label || cta.href); a.href = safeUrl(cta.href); box.appendChild(a); }
    slot.replaceChildren(box);
    slot.setAttribute('data-attimo-offer', o.offer);
    var props = { offer: o.offer, decision_id: decision, placement: slot.getAttribute('data-attimo-slot') };
    if (w.performance && performance.mark) performance.mark('attimo:filled:' + props.placement);
    slot.addEventListener('click', function () { event('click', props); flush(); });
    if (w.IntersectionObserver) {
      var io = new IntersectionObserver(function (es) {
        if (es.some(function (e) { return e.isIntersecting; })) { io.disconnect(); event('impression', props); }
      }, { threshold: 0.5 });
      io.observe(slot);
    } else event('impression', props);
  }

  // Single-page apps: a page view on every History API navigation.
  function hook(name) {
    var orig = history[name];
    history[name] = function () {
      var before = location.href, r = orig.apply(this, arguments);
      if (location.href != before) setTimeout(pageView, 0);
      return r;
    };
  }
  hook('pushState');
  hook('replaceState');
  w.addEventListener('popstate', function () { setTimeout(pageView, 0); });

  function forget() { userId = userSig = null; set('uid', null); set('sig', null); }

  var commands = {
    track: function (type, props) { event(String(type), props); },
    identify: function (id, sig, traits) {
      userId = String(id);
      userSig = String(sig || '');
      set('uid', userId);
      set('sig', userSig);
      event('identify', {}, traits ? { traits: traits } : {});
    },
    consent: function (c) {
      var ok = !c || c.analytics !== false && c.personalization !== false;
      if (ok && !consented) { consented = true; set('consent', '1'); start(); pageView(); }
      else if (!ok) {
        // Withdrawn: forget every id and queued event, keep only the refusal.
        ['aid', 'uid', 'sig', 'outbox'].forEach(function (k) { try { ls.removeItem(P + k); } catch (e) {} });
        try { ls.setItem(P + 'consent', '0'); } catch (e) {}
        consented = false; outbox = []; aid = userId = userSig = null;
      }
    },
    // Logout: a new anonymous id, the user forgotten, nothing of theirs queued.
    reset: function () { forget(); outbox = []; save(); aid = uid(); set('aid', aid); },
    page: pageView,
    flush: flush
  };
  function run(args) { var f = commands[args[0]]; if (f) f.apply(null, [].slice.call(args, 1)); }

  var queued = (w.attimo && w.attimo.q) || [];
  w.attimo = function () { run(arguments); };
  w.attimo.loaded = true;
  if (consented) start();
  function boot() {
    var hadConsent = consented;
    queued.forEach(run);
    if (hadConsent) pageView();
  }
  d.readyState == 'loading' ? d.addEventListener('DOMContentLoaded', boot) : boot();
})(window, document);
