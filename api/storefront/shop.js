// Demo storefront behaviour. Uses only the public snippet API (attimo(...)),
// plus the DEMO-ONLY /demo/sign and /demo/profile endpoints of `attimo demo`.
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var store = window.localStorage;

  // Consent banner: the snippet runs in consent-required mode here.
  var banner = $('consent');
  if (store.getItem('attimo_consent') !== '1' && store.getItem('shop_consent') !== 'no') banner.hidden = false;
  $('consent-yes').addEventListener('click', function () {
    attimo('consent', { personalization: true });
    banner.hidden = true;
  });
  $('consent-no').addEventListener('click', function () {
    attimo('consent', { personalization: false });
    store.setItem('shop_consent', 'no');
    banner.hidden = true;
  });

  function signIn(userId, traits) {
    return fetch('/demo/sign', { method: 'POST', body: JSON.stringify({ user_id: userId }) })
      .then(function (r) { return r.json(); })
      .then(function (s) {
        attimo('consent', { personalization: true });
        attimo('identify', s.user_id, s.user_sig, traits);
        attimo('flush');
        banner.hidden = true;
      });
  }

  var form = $('register');
  if (form) {
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      var data = new FormData(form);
      signIn('u-' + data.get('username'), { registered: true, first_name: String(data.get('first_name')) })
        .then(function () { form.hidden = true; $('register-done').hidden = false; refresh(); });
    });
    document.querySelectorAll('[data-demo-person]').forEach(function (b) {
      b.addEventListener('click', function () {
        signIn(b.getAttribute('data-demo-person')).then(function () { location.href = '/'; });
      });
    });
  }

  var watch = $('watch');
  if (watch) watch.addEventListener('click', function () {
    attimo('track', 'video_progress', { video: 'crm_demo', seconds: 60 });
  });
  var video = $('demo-video');
  if (video) video.addEventListener('play', function () {
    attimo('track', 'video_play', { video: 'crm_demo' });
  });
  var add = $('add-to-cart');
  if (add) add.addEventListener('click', function () {
    attimo('track', 'add_to_cart', { product: 'crm-pro', category: 'crm' });
    location.href = '/cart';
  });

  // The demo profile panel: this browser's own profile, read through /demo/profile.
  var out = $('profile');
  function refresh() {
    if (!out) return;
    attimo('flush');
    setTimeout(function () {
      var q = new URLSearchParams();
      var uid = store.getItem('attimo_uid'), aid = store.getItem('attimo_aid');
      if (uid) { q.set('user_id', uid); q.set('user_sig', store.getItem('attimo_sig') || ''); }
      else if (aid) q.set('anonymous_id', aid);
      else { out.textContent = 'No profile yet: accept personalization first.'; return; }
      fetch('/demo/profile?' + q).then(function (r) { return r.json(); }).then(function (p) {
        out.textContent = JSON.stringify({
          person: p.person, traits: p.traits, score: p.score, segments: p.segments,
          features: p.features, impressions: p.impressions
        }, null, 1);
      });
    }, 400);
  }
  if (out) { $('profile-refresh').addEventListener('click', refresh); refresh(); }
})();
