// Starts Swagger UI on /api/docs (a file of its own: no inline script).
(function () {
  var url = document.getElementById("api-docs-script").getAttribute("data-spec-url");
  window.ui = SwaggerUIBundle({ url: url, dom_id: "#swagger-ui", deepLinking: true, tryItOutEnabled: false });
})();
