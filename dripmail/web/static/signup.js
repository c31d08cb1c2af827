// Fills the sign-up form's time zone from the browser (the course zone stays if unknown)
// and records the page the form was on, for the consent record.
(function () {
  var form = document.getElementById("dripmail-signup");
  if (!form) return;
  try {
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone) form.elements.timezone.value = zone;
  } catch (e) { /* old browser */ }
  form.elements.source.value = window.location.href;
})();
