// Swagger UI on the platform's own OpenAPI description, which needs the API key when the
// platform requires one: the description is fetched here with the key (the console's, in this
// tab's sessionStorage, or one entered below) and handed to Swagger UI, which sends the same key
// when "Try it out" calls the API. Nothing from a response is written as HTML by this script.
"use strict";

const BASE = location.pathname.replace(/\/docs\/?$/, "");  // the platform's route prefix
const KEY_STORE = "rayserve-platform-api-key";               // the console's: one login for both
const $ = (id) => document.getElementById(id);

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function showLogin(message) {
  $("login").hidden = false;
  $("logout").hidden = true;
  $("login-error").textContent = message;
  $("swagger-ui").replaceChildren();
}

async function load() {
  const key = apiKey();
  const response = await fetch(`${BASE}/openapi.json`, {headers: key ? {Authorization: `Bearer ${key}`} : {}});
  if (response.status === 401) return showLogin(key ? "That key was refused." : "");
  if (!response.ok) return showLogin(`${response.status}: ${await response.text()}`);
  const spec = await response.json();
  if (BASE && !spec.servers) spec.servers = [{url: BASE}];  // "Try it out" under the route prefix
  $("login").hidden = true;
  $("logout").hidden = !key;
  window.ui = SwaggerUIBundle({  // as Swagger UI's own page names it, for scripts and tests
    spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,  // its badge would call validator.swagger.io
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    onComplete: () => authorize(key, spec.components?.securitySchemes?.bearer),
  });
}

// "Try it out" sends the key: Swagger's own preauthorizeApiKey reads the scheme from the resolved
// description, which a description this large may not have yet when Swagger says it is done.
function authorize(key, scheme) {
  if (key && scheme) window.ui.authActions.authorize({bearer: {name: "bearer", schema: scheme, value: key}});
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value);
  $("api-key").value = "";
  load();
});
$("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); location.reload(); });
load().catch((error) => showLogin(`cannot reach the platform: ${error.message}`));
