// The API reference at /docs: Swagger UI over the gateway's OpenAPI documents, one at a time, chosen
// with the selector. A static file because the page's Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  var select = document.getElementById("docs-document");
  var raw = document.getElementById("docs-raw");

  function chosen() {
    return select.options[select.selectedIndex];
  }

  var ui = SwaggerUIBundle({
    url: chosen().value,
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null, // no badge fetched from the public validator
    tryItOutEnabled: true,
    persistAuthorization: true, // the pasted key stays when another document is chosen
    deepLinking: false,
    displayRequestDuration: true,
  });

  select.addEventListener("change", function () {
    var option = chosen();
    raw.href = option.value;
    var params = new URLSearchParams(window.location.search);
    params.set("doc", option.getAttribute("data-name"));
    window.history.replaceState(null, "", window.location.pathname + "?" + params.toString());
    ui.specActions.updateUrl(option.value);
    ui.specActions.download(option.value);
  });
})();
