// The webfon's REST API (same origin; the session cookie is HttpOnly: the page never sees it).
async function call(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = {};
  try { data = await response.json(); } catch { data = {}; }
  return { status: response.status, data };
}

export const api = {
  config: () => call("GET", "/api/config"),
  session: () => call("GET", "/api/session"),
  login: (user, password, lang) => call("POST", "/api/login", { user, password, lang }),
  logout: () => call("POST", "/api/logout", {}),
};
