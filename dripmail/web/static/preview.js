// Live reload for the preview: a long poll that the server answers as soon as a file in
// course/, emails/ or newsletters/ changes (watched with watchfiles); reload when it does.
(function () {
  var meta = document.querySelector('meta[name="dripmail-version"]');
  if (!meta) return;
  var seen = meta.content;
  function wait() {
    fetch("/preview/version?seen=" + encodeURIComponent(seen), { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data && data.version && data.version !== seen) { window.location.reload(); return; }
        wait();  // no change within the server's wait: ask again
      })
      .catch(function () { setTimeout(wait, 3000); });  // server restarting: keep trying
  }
  wait();
})();
