// Live reload for the preview: poll the files' version once a second and reload on change.
(function () {
  var meta = document.querySelector('meta[name="dripmail-version"]');
  if (!meta) return;
  var seen = meta.content;
  function poll() {
    fetch("/preview/version", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data && data.version && data.version !== seen) { window.location.reload(); return; }
        setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });  // server restarting: keep trying
  }
  setTimeout(poll, 1000);
})();
