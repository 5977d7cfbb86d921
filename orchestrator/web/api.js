// REST access for the page: the read token (kept for this tab's session) on every request, and a prompt
// for one when the server answers 401.

const TOKEN_KEY = "orchestrator.read_token";
let pending = null; // one prompt at a time, shared by every request that met a 401

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function readToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export async function getJSON(path, params = {}) {
  for (;;) {
    const url = new URL(path, location.origin);
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
    }
    const headers = { Accept: "application/json" };
    const token = readToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(url, { headers });
    if (response.status === 401) {
      await askForToken(token ? "That token was not accepted." : "");
      continue;
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const error = body && body.error ? body.error : { code: "http_" + response.status, message: response.statusText };
      throw new ApiError(response.status, error.code, error.message);
    }
    return body;
  }
}

export function askForToken(problem = "") {
  if (pending) return pending;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  document.getElementById("token-error").textContent = problem;
  input.value = "";
  pending = new Promise((resolve) => {
    form.addEventListener(
      "submit",
      () => {
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        pending = null;
        resolve();
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return pending;
}
