// The console's own script: copy buttons, confirmations. Loaded from /console/static (no inline
// script anywhere: the Content-Security-Policy allows scripts from the console itself only).
"use strict";

document.addEventListener("click", function (event) {
  var copy = event.target.closest("[data-copy]");
  if (copy) {
    var source = document.getElementById(copy.getAttribute("data-copy"));
    if (!source) return;
    var text = source.value !== undefined ? source.value : source.textContent;
    var note = document.querySelector('[data-copied-for="' + source.id + '"]');
    var done = function () { if (note) note.textContent = "Copied to the clipboard."; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { source.select(); });
    } else {
      source.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected */ }
    }
    return;
  }
  var confirmer = event.target.closest("[data-confirm]");
  if (confirmer && !window.confirm(confirmer.getAttribute("data-confirm"))) {
    event.preventDefault();
  }
});

// A dialog closed by its button leaves the page; its secret goes with it.
document.addEventListener("close", function (event) {
  if (event.target.tagName === "DIALOG") {
    if (event.target.hasAttribute("data-reopening")) {
      // Closed only to be reopened as a modal (below): the secret stays.
      event.target.removeAttribute("data-reopening");
      return;
    }
    event.target.querySelectorAll("input, textarea").forEach(function (el) { el.value = ""; });
  }
}, true);

// A creation dialog opens as a modal: focus moves into it, Escape closes it, the page behind is inert.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("dialog.secret[open]").forEach(function (dialog) {
    if (typeof dialog.showModal !== "function") return;
    dialog.setAttribute("data-reopening", "");
    dialog.close();
    dialog.showModal();
    var copy = dialog.querySelector("[data-copy]");
    if (copy) copy.focus();
  });
});
