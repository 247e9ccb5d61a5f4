// The approval console's script (served by orchestrator-mock at
// /console/console.js; see orchestrator-mock/src/console.rs).
//
// It asks for the admin token and the approver key, polls
// /v1/console/plans every 2 s and shows each plan. Approving signs every
// step here, in the browser, with WebCrypto Ed25519 over the canonical
// statement (proto/src/approval.rs, Statement::signing_bytes) and posts the
// approvals with the review digest of the plan as shown (expect_digest).
// The private key is imported non-extractable and never sent anywhere.
//
// Every text from the server is attacker-controlled (plan inputs come from
// an agent): it is inserted with textContent only, never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const STATEMENT_TYPE = "private-worker.approval.v1";
  const ALGORITHM = "ed25519";

  /** What the person gave; the token and key live in this closure only. */
  const session = { token: null, key: null, keyId: "", audience: "", validMinutes: 10 };
  /** The review digest this page first showed for each plan id: a plan
   *  whose digest changes later cannot be approved from this page. */
  const firstDigest = new Map();
  /** Plans whose approve or reject call is in flight. */
  const busy = new Set();
  let pollTimer = null;

  // ---- canonical JSON (RFC 8785) and hashing ----

  /** RFC 8785 canonical JSON text of a parsed JSON value. */
  function canonicalize(value) {
    if (value === null || typeof value === "boolean" || typeof value === "string") {
      return JSON.stringify(value);
    }
    if (typeof value === "number") {
      if (!Number.isFinite(value)) throw new Error("a number that is not finite cannot be signed");
      // ECMAScript's Number-to-String is the one RFC 8785 specifies.
      return JSON.stringify(value);
    }
    if (Array.isArray(value)) {
      return "[" + value.map(canonicalize).join(",") + "]";
    }
    if (typeof value === "object") {
      // Default sort compares UTF-16 code units, as RFC 8785 asks.
      const keys = Object.keys(value).sort();
      return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonicalize(value[k])).join(",") + "}";
    }
    throw new Error("not a JSON value: " + typeof value);
  }

  function hex(bytes) {
    return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sha256Hex(text) {
    return hex(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
  }

  /** The review digest of a plan (orchestrator-mock/src/approvals.rs, review_digest). */
  async function reviewDigest(plan) {
    const steps = plan.steps.map((s) => ({
      task_id: s.task_id, task: s.task, version: s.version, inputs: s.inputs,
    }));
    return sha256Hex(canonicalize({ plan_id: plan.id, steps }));
  }

  /** The signed bytes of a statement (Statement::signing_bytes). */
  function signingBytes(statement) {
    return canonicalize(Object.assign({}, statement, { type: STATEMENT_TYPE, algorithm: ALGORITHM }));
  }

  /** One DER element at `offset`: its tag and where its content starts and ends. */
  function derElement(der, offset) {
    if (offset + 2 > der.length) throw new Error("the key file's DER is cut short");
    const tag = der[offset];
    let length = der[offset + 1];
    let start = offset + 2;
    if (length & 0x80) {
      const count = length & 0x7f;
      if (count < 1 || count > 2) throw new Error("the key file's DER has an unsupported length");
      length = 0;
      for (let i = 0; i < count; i++) length = length * 256 + der[start++];
    }
    if (start + length > der.length) throw new Error("the key file's DER is cut short");
    return { tag, start, end: start + length };
  }

  /**
   * The 32-byte Ed25519 seed of a PKCS#8 key, v1 (RFC 8410) or v2 with
   * the public key (what certs-tool approver-key writes; Chromium's
   * WebCrypto imports only v1).
   */
  function ed25519Seed(der) {
    const outer = derElement(der, 0);
    const version = derElement(der, outer.start);
    const algorithm = derElement(der, version.end);
    const oid = Array.from(der.slice(algorithm.start, algorithm.end)).join(",");
    const privateKey = derElement(der, algorithm.end);
    if (outer.tag !== 0x30 || version.tag !== 0x02 || algorithm.tag !== 0x30 || oid !== "6,3,43,101,112" || privateKey.tag !== 0x04) {
      throw new Error("the key file is not an Ed25519 PKCS#8 key; use the .key file certs-tool approver-key wrote");
    }
    const seed = derElement(der, privateKey.start);
    if (seed.tag !== 0x04 || seed.end - seed.start !== 32) throw new Error("the key file's Ed25519 key is not 32 bytes");
    return der.slice(seed.start, seed.end);
  }

  /** Imports a PKCS#8 PEM Ed25519 private key, non-extractable. */
  async function importKey(pem) {
    const match = /-----BEGIN PRIVATE KEY-----([A-Za-z0-9+/=\s]+)-----END PRIVATE KEY-----/.exec(pem);
    if (!match) throw new Error("the key file is not a PKCS#8 PEM private key (BEGIN PRIVATE KEY); use the .key file certs-tool approver-key wrote");
    const der = Uint8Array.from(atob(match[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
    // Re-wrapped as PKCS#8 v1: SEQUENCE { 0, { id-Ed25519 }, OCTET STRING { OCTET STRING seed } }.
    const v1 = new Uint8Array(48);
    v1.set([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);
    v1.set(ed25519Seed(der), 16);
    return crypto.subtle.importKey("pkcs8", v1, { name: "Ed25519" }, false, ["sign"]);
  }

  async function signHex(key, text) {
    return hex(await crypto.subtle.sign({ name: "Ed25519" }, key, new TextEncoder().encode(text)));
  }

  /** One signed approval for `step` of `plan` (what the CLI's sign_plan makes). */
  async function approveStep(plan, step, now) {
    const nonce = hex(crypto.getRandomValues(new Uint8Array(16)));
    const notBefore = Math.floor(now / 1000);
    const notAfter = notBefore + session.validMinutes * 60;
    const statement = {
      task_id: step.task_id,
      plan_id: plan.id,
      task_name: step.task,
      task_version: step.version,
      inputs_sha256: await sha256Hex(canonicalize(step.inputs)),
      audience: session.audience,
      key_id: session.keyId,
      nonce,
      not_before: notBefore,
      not_after: notAfter,
    };
    return {
      task_id: step.task_id,
      key_id: session.keyId,
      algorithm: ALGORITHM,
      signature: await signHex(session.key, signingBytes(statement)),
      not_before: notBefore,
      not_after: notAfter,
      nonce,
      audience: session.audience,
    };
  }

  // ---- the API ----

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + session.token };
    if (method !== "GET") headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit", redirect: "error",
    });
    const text = await response.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const what = json && json.error ? json.error + ": " + json.message : response.status + " " + text.slice(0, 200);
      const problems = json && Array.isArray(json.problems) ? json.problems.map((p) => "step " + p.step + ": " + p.message) : [];
      throw new Error([what].concat(problems).join("; "));
    }
    return json;
  }

  // ---- rendering (textContent only) ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  /** What the schema says of one input field, in a line. */
  function describeField(schema, name) {
    const props = (schema && schema.properties) || {};
    const field = props[name];
    const required = Array.isArray(schema && schema.required) && schema.required.includes(name);
    if (!field) return required ? "required; not described by the schema" : "not described by the schema";
    const parts = [];
    if (field.description) parts.push(String(field.description));
    if (field.type) parts.push(Array.isArray(field.type) ? field.type.join(" or ") : String(field.type));
    for (const k of ["minLength", "maxLength", "minimum", "maximum", "pattern", "format", "enum"]) {
      if (field[k] !== undefined) parts.push(k + " " + JSON.stringify(field[k]));
    }
    parts.push(required ? "required" : "optional");
    return parts.join(", ");
  }

  function inputsTable(inputs, schema) {
    if (inputs === null || typeof inputs !== "object" || Array.isArray(inputs)) {
      return el("pre", {}, JSON.stringify(inputs, null, 2));
    }
    const table = el("table", { class: "inputs" },
      el("tr", {}, el("th", {}, "field"), el("th", {}, "value"), el("th", {}, "schema")));
    for (const name of Object.keys(inputs).sort()) {
      table.append(el("tr", { "data-field": name },
        el("td", {}, name),
        el("td", {}, el("pre", {}, JSON.stringify(inputs[name], null, 2))),
        el("td", { class: "schema" }, describeField(schema, name))));
    }
    return table;
  }

  function stepBlock(step, task, finished) {
    const block = el("div", { class: "step" },
      el("div", {}, el("span", { class: "task" }, "step " + step.index + ": " + step.task + " v" + step.version),
        " — " + (task ? task.description : "(not in the registry)")),
      inputsTable(step.inputs, task && task.input_schema));
    if (task && (task.read_only || task.destructive)) {
      block.append(el("p", { class: "meta" }, task.read_only ? "read-only" : "destructive"));
    }
    if (finished || step.status !== "waiting") {
      const line = ["status " + step.status];
      if (step.worker) line.push("on " + step.worker);
      if (step.approved_by) line.push("approved by " + step.approved_by);
      if (step.error_code) line.push(step.error_code + ": " + (step.error_message || ""));
      block.append(el("p", { class: "meta step-status" }, line.join(" · ")));
      if (step.output !== null && step.output !== undefined) {
        block.append(el("pre", { class: "output" }, JSON.stringify(step.output, null, 2)));
      }
    }
    return block;
  }

  // `changed`: the plan's review digest differs from the one this page
  // first showed for it; it cannot be approved from this page any more.
  function planCard(plan, tasks, changed) {
    const card = el("article", { class: "plan", "data-plan-id": plan.id, "data-status": plan.status },
      el("h3", {}, (plan.name ? plan.name + " · " : "") + "plan " + plan.id),
      el("p", { class: "meta" }, "submitted by " + (plan.submitted_by || "(unknown)") + " at " + plan.created_at + " · " + plan.status),
      el("p", { class: "digest" }, "review digest " + plan.review_digest));
    for (const step of plan.steps) {
      card.append(stepBlock(step, tasks.get(step.task + "@" + step.version), plan.status !== "pending_approval"));
    }
    if (plan.audit) {
      const a = plan.audit;
      card.append(el("p", { class: "audit" }, "audit: " + a.records + " record(s), chain verdict ",
        el("span", { class: "verdict-" + a.verdict }, a.verdict),
        a.problems.length ? " — " + a.problems.join("; ") : ""));
    }
    if (plan.status === "pending_approval") {
      const reason = el("input", { type: "text", class: "reason", placeholder: "reason (for a rejection)" });
      const approve = el("button", { type: "button", class: "approve" }, "Approve and sign");
      const reject = el("button", { type: "button", class: "reject" }, "Reject");
      const message = el("span", { class: "message" });
      if (changed) {
        approve.disabled = true;
        approve.textContent = "Changed: reload to review again";
      }
      // Each button acts on exactly the plan object this card drew, never
      // on data that arrived later.
      approve.addEventListener("click", () => act(plan, "approve", reason, message));
      reject.addEventListener("click", () => act(plan, "reject", reason, message));
      card.append(el("div", { class: "actions" }, approve, reject, reason, message));
    }
    return card;
  }

  function fill(containerId, cards) {
    const container = document.getElementById(containerId);
    if (cards.length === 0) {
      container.replaceChildren(el("p", { class: "empty" }, "None."));
    } else {
      container.replaceChildren(...cards);
    }
  }

  // ---- acting ----

  async function act(plan, what, reasonInput, message) {
    const planId = plan.id;
    if (busy.has(planId)) return;
    if (what === "approve" && firstDigest.get(planId) !== plan.review_digest) return;
    busy.add(planId);
    message.className = "message";
    message.textContent = what === "approve" ? "signing…" : "rejecting…";
    try {
      if (what === "approve") {
        if (!session.key) throw new Error("load your approver key file first (Connect)");
        // The digest of what this page showed; the server must agree.
        const digest = await reviewDigest(plan);
        if (digest !== plan.review_digest) {
          throw new Error("this page computes review digest " + digest + " but the server says " + plan.review_digest + "; nothing signed");
        }
        const now = Date.now();
        const approvals = [];
        for (const step of plan.steps) approvals.push(await approveStep(plan, step, now));
        await api("POST", "/v1/plans/" + encodeURIComponent(planId) + "/approve", { approvals, expect_digest: digest });
        message.textContent = "approved";
      } else {
        const reason = reasonInput.value.trim() || "rejected in the approval console";
        await api("POST", "/v1/plans/" + encodeURIComponent(planId) + "/reject", { reason });
        message.textContent = "rejected";
      }
    } catch (e) {
      message.className = "message error";
      message.textContent = String(e.message || e);
    } finally {
      busy.delete(planId);
    }
  }

  // ---- polling ----

  let tasks = new Map();

  async function refresh() {
    try {
      if (tasks.size === 0) {
        for (const t of await api("GET", "/v1/tasks")) tasks.set(t.name + "@" + t.version, t);
      }
      const plans = await api("GET", "/v1/console/plans");
      const pending = [], running = [], finished = [];
      // Built in full before anything is shown: a plan that breaks the page
      // leaves the old cards, which still act on the plans they drew.
      const seen = new Map(firstDigest);
      for (const plan of plans) {
        if (!seen.has(plan.id)) seen.set(plan.id, plan.review_digest);
        // A pending plan whose card is being acted on keeps its card.
        if (busy.has(plan.id)) {
          const card = document.querySelector('article[data-plan-id="' + CSS.escape(plan.id) + '"]');
          if (card) { (plan.status === "pending_approval" ? pending : running).push(card); continue; }
        }
        const changed = seen.get(plan.id) !== plan.review_digest && plan.status === "pending_approval";
        const card = planCard(plan, tasks, changed);
        if (changed) {
          card.prepend(el("p", { class: "error" }, "this plan changed since it was first shown; reload the page to review it again"));
        }
        if (plan.status === "pending_approval") pending.push(card);
        else if (["approved", "running"].includes(plan.status)) running.push(card);
        else finished.push(card);
      }
      // Keep what the person typed in a reason box across refreshes.
      for (const card of pending) {
        const old = document.querySelector('#pending article[data-plan-id="' + CSS.escape(card.dataset.planId) + '"] input.reason');
        const now = card.querySelector("input.reason");
        if (old && now && old !== now) now.value = old.value;
        const oldMessage = document.querySelector('#pending article[data-plan-id="' + CSS.escape(card.dataset.planId) + '"] .message');
        const newMessage = card.querySelector(".message");
        if (oldMessage && newMessage && oldMessage !== newMessage) { newMessage.textContent = oldMessage.textContent; newMessage.className = oldMessage.className; }
      }
      for (const [id, digest] of seen) if (!firstDigest.has(id)) firstDigest.set(id, digest);
      fill("pending", pending);
      fill("running", running);
      fill("finished", finished);
      setStatus("Connected as key " + session.keyId + " for " + session.audience + "; updated " + new Date().toLocaleTimeString() + ".", false);
    } catch (e) {
      setStatus("Could not refresh: " + (e.message || e), true);
    }
  }

  async function connect(event) {
    event.preventDefault();
    const token = document.getElementById("token").value.trim();
    const file = document.getElementById("key-file").files[0];
    let keyId = document.getElementById("key-id").value.trim();
    session.audience = document.getElementById("audience").value.trim();
    session.validMinutes = Math.max(1, Number(document.getElementById("valid-minutes").value) || 10);
    try {
      if (!window.isSecureContext || !crypto.subtle) {
        throw new Error("this page is not a secure context, so WebCrypto is unavailable; open it over https or on localhost");
      }
      if (file) {
        if (!keyId) keyId = file.name.replace(/\.(key|pem)$/, "");
        session.key = await importKey(await file.text());
      }
      session.keyId = keyId;
      session.token = token;
      document.getElementById("token").value = "";
      document.getElementById("key-file").value = "";
      document.getElementById("key-id").value = keyId;
      tasks = new Map();
      await refresh();
      if (pollTimer === null) pollTimer = setInterval(refresh, POLL_MS);
    } catch (e) {
      setStatus("Not connected: " + (e.message || e), true);
    }
  }

  // For the browser test: the signing pieces, checked against
  // proto/testvectors/approval.json.
  window.privateWorkerConsole = Object.freeze({ canonicalize, sha256Hex, signingBytes, importKey, signHex, reviewDigest });

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("connect").addEventListener("submit", connect);
  });
})();
