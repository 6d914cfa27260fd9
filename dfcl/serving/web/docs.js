// /docs: Swagger UI on /openapi.json, from the files the server ships (no CDN; the page's CSP
// allows no inline script, so its start is this file). validatorUrl null: no call to swagger.io.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
  persistAuthorization: false,
});
