// The console's one script: asks the security key (navigator.credentials) over the statement the appliance
// made, and posts the assertion back. No framework; no inline script anywhere (the CSP forbids it).
"use strict";

const b64u = {
  decode(text) {
    let s = text.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  },
  encode(buffer) {
    let s = "";
    for (const byte of new Uint8Array(buffer)) s += String.fromCharCode(byte);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
};

class Refusal extends Error {
  constructor(problem, status) {
    super((problem && problem.detail) || `the appliance answered ${status}`);
    this.problem = problem || {};
  }
}

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) throw new Refusal(data, response.status);
  return data;
}

function say(text, kind) {
  const status = document.getElementById("status");
  status.hidden = false;
  status.className = "status " + (kind || "");
  status.textContent = text;
}

function sayRefusal(error) {
  const lines = [error.message];
  for (const e of (error.problem && error.problem.errors) || []) lines.push(`${e.location}: ${e.message}`);
  if (error.name === "NotAllowedError") lines[0] = "The security key was not used (cancelled or timed out).";
  say(lines.join("\n"), "bad");
}

function formValues(id) {
  const values = {};
  const form = document.getElementById(id);
  if (!form) return values;
  for (const element of form.elements) {
    if (!element.name || element.disabled) continue;
    if (element.type === "checkbox") {
      if (element.checked) (values[element.name] = values[element.name] || []).push(element.value);
    } else {
      values[element.name] = element.value;
    }
  }
  return values;
}

async function assertStatement(statement) {
  const pk = statement.publicKey;
  const credential = await navigator.credentials.get({ publicKey: {
    challenge: b64u.decode(pk.challenge), rpId: pk.rpId, timeout: pk.timeout,
    userVerification: pk.userVerification,
    allowCredentials: pk.allowCredentials.map((c) => ({ type: c.type, id: b64u.decode(c.id), transports: c.transports })),
  } });
  return { typ: statement.typ, payload: statement.payload, credential: {
    id: credential.id,
    authenticator_data: b64u.encode(credential.response.authenticatorData),
    client_data_json: b64u.encode(credential.response.clientDataJSON),
    signature: b64u.encode(credential.response.signature),
  } };
}

async function sign(button) {
  const body = { ...JSON.parse(button.dataset.body || "{}"), ...formValues(button.dataset.form) };
  say("Asking the appliance for the statement to sign…");
  const statement = await post(button.dataset.statement, body);
  say("Touch your security key to sign.");
  const signed = await assertStatement(statement);
  if (button.dataset.next) signed.next = button.dataset.next;
  const result = await post(button.dataset.action, signed);
  say(result.progress ? `Recorded: ${result.status}, ${result.progress}` : "Done.", "ok");
  if (result.redirect) window.location.assign(result.redirect);
}

async function register(button) {
  const body = formValues(button.dataset.form);
  const { publicKey: o } = await post(button.dataset.options, body);
  say("Touch your new security key.");
  const credential = await navigator.credentials.create({ publicKey: {
    ...o, challenge: b64u.decode(o.challenge), user: { ...o.user, id: b64u.decode(o.user.id) },
    excludeCredentials: o.excludeCredentials.map((c) => ({ type: c.type, id: b64u.decode(c.id) })),
  } });
  const response = {
    id: credential.id, rawId: b64u.encode(credential.rawId), type: credential.type,
    response: {
      clientDataJSON: b64u.encode(credential.response.clientDataJSON),
      attestationObject: b64u.encode(credential.response.attestationObject),
      transports: credential.response.getTransports ? credential.response.getTransports() : [],
    },
  };
  const result = await post(button.dataset.action, { ...body, credential: response });
  say(`Registered. Its fingerprint is ${result.fingerprint}: read it to a security admin, who will propose its enrolment.`, "ok");
  const out = document.createElement("p");
  out.id = "fingerprint";
  out.textContent = result.fingerprint;
  button.closest("form").appendChild(out);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-sign], [data-register]");
  if (!button) return;
  event.preventDefault();
  const form = button.dataset.form && document.getElementById(button.dataset.form);
  if (form && !form.reportValidity()) return;
  button.disabled = true;
  (button.dataset.register !== undefined ? register(button) : sign(button))
    .catch(sayRefusal)
    .finally(() => { button.disabled = false; });
});
