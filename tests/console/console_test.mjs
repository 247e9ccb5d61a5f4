// Drives the approval console in headless Chromium (Debian's
// /usr/bin/chromium) with playwright-core, for tests/tests/console.rs.
//
// node console_test.mjs <console url> <key file> <key id> <audience>
//      <approve plan id> <reject plan id> <hostile plan id>
//      <screenshot path> <approval test vectors (proto/testvectors/approval.json)>
//
// The admin token comes in the environment (CONSOLE_TOKEN), not on the
// command line. Prints one line per check ("ok <what>") and exits non-zero
// with "FAILED <what>" on the first check that fails.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [url, keyFile, keyId, audience, approveId, rejectId, hostileId, screenshot, vectorsPath] =
  process.argv.slice(2);
const token = process.env.CONSOLE_TOKEN;
if (!vectorsPath || !token) {
  console.error("usage: CONSOLE_TOKEN=... node console_test.mjs <url> <key file> <key id> <audience> <approve id> <reject id> <hostile id> <screenshot> <approval.json>");
  process.exit(2);
}

const WAIT_MS = 60_000;
const began = Date.now();

/**
 * Polls `probe` (run in node; page.evaluate and textContent go through the
 * DevTools protocol, which the page's CSP does not block, unlike
 * waitForFunction's polling) until it returns a truthy value.
 */
async function until(probe, what) {
  const start = Date.now();
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() - start > WAIT_MS) throw new Error("timed out waiting until " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function check(condition, what) {
  if (!condition) throw new Error(what);
  console.log("ok " + what + " (" + ((Date.now() - began) / 1000).toFixed(1) + " s)");
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "console-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
// Nothing but the console's own origin: no network at test time.
const origin = new URL(url).origin;
await context.route("**/*", (route) =>
  new URL(route.request().url()).origin === origin ? route.continue() : route.abort());

const errors = [];
let exitCode = 0;
const page = context.pages()[0] || (await context.newPage());
try {
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("dialog", (d) => { errors.push("dialog opened: " + d.message()); d.dismiss(); });
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await until(() => page.evaluate(() => window.privateWorkerConsole !== undefined), "the console script loaded");

  // 1. The page signs exactly as proto/src/approval.rs does.
  const vectors = JSON.parse(fs.readFileSync(vectorsPath, "utf8"));
  const got = await page.evaluate(async (v) => {
    const c = window.privateWorkerConsole;
    const valid = v.cases.find((k) => k.expect === "ok");
    const bytes = c.signingBytes(v.statement);
    const key = await c.importKey(v.private_key_pem);
    return {
      bytes,
      inputs: await c.sha256Hex(c.canonicalize(JSON.parse(valid.inputs_json))),
      reordered: c.canonicalize({ b: [1, { y: 2, x: 1e21 }], a: "é\u2028", c: -0, d: 0.1 }),
      signature: await c.signHex(key, bytes),
    };
  }, vectors);
  check(got.bytes === vectors.signing_bytes, "signing bytes equal the test vector's");
  check(got.inputs === vectors.statement.inputs_sha256, "canonical inputs hash to the test vector's inputs_sha256");
  check(got.signature === vectors.signature_hex, "the page's Ed25519 signature equals the test vector's");
  check(got.reordered === '{"a":"é\u2028","b":[1,{"x":1e+21,"y":2}],"c":0,"d":0.1}', "canonical JSON sorts keys and writes numbers as RFC 8785 does");

  // 2. Connect: token, key file, key id, audience.
  await page.fill("#token", token);
  await page.setInputFiles("#key-file", keyFile);
  await page.fill("#key-id", keyId);
  await page.fill("#audience", audience);
  await page.click("#connect-button");
  const card = (id) => `#pending article[data-plan-id="${id}"]`;
  for (const id of [approveId, rejectId, hostileId]) {
    await page.waitForSelector(card(id), { timeout: WAIT_MS });
  }
  check(true, "the three pending plans are listed");
  check((await page.inputValue("#token")) === "", "the token field is cleared after connecting");

  // 3. A pending plan shows its task, description, inputs with the schema, submitter.
  const text = await page.textContent(card(approveId));
  check(text.includes("crm.create_ticket") && text.includes("Open a support ticket in the CRM"), "the pending plan shows its task and description");
  const titleRow = await page.textContent(`${card(approveId)} tr[data-field="title"]`);
  check(titleRow.includes("console approves this") && titleRow.includes("string") && titleRow.includes("required"), "the inputs are shown with what the schema says of each field");
  check(/submitted by \S+ at \d{4}-/.test(text), "the submitter and submission time are shown");

  // 4. Hostile inputs are text, never markup.
  const hostile = await page.evaluate((id) => {
    const c = document.querySelector(`article[data-plan-id="${id}"]`);
    return {
      images: document.querySelectorAll("img").length,
      elementsInCard: c.querySelectorAll("img, script, iframe, svg, b").length,
      pwned: window.__pwned === true,
      shown: c.textContent.includes("<img src=x onerror=window.__pwned=true>"),
    };
  }, hostileId);
  check(hostile.images === 0 && hostile.elementsInCard === 0 && !hostile.pwned, "hostile inputs created no element and ran no script");
  check(hostile.shown, "hostile inputs are shown as text");

  // 5. Reject one with a reason; approve the other (signed in the page).
  await page.fill(`${card(rejectId)} input.reason`, "not today: console test");
  await page.click(`${card(rejectId)} button.reject`);
  await page.waitForSelector(`#finished article[data-plan-id="${rejectId}"][data-status="rejected"]`, { timeout: WAIT_MS });
  check(true, "the rejected plan moves to finished as rejected");

  await page.click(`${card(approveId)} button.approve`);
  const done = `#finished article[data-plan-id="${approveId}"][data-status="succeeded"]`;
  await page.waitForSelector(done, { timeout: WAIT_MS });
  check(true, "the approved plan runs and moves to finished as succeeded");
  await until(async () => (await page.textContent(`${done} .audit span`)) === "ok", "the audit verdict is ok");
  const finished = await page.textContent(done);
  check(finished.includes("approved by " + keyId), "the finished plan names the approver key");
  check(finished.includes("ticket_id") || finished.includes("\"id\""), "the finished plan shows its result");
  check(true, "the finished plan shows the audit chain verdict ok");

  await page.screenshot({ path: screenshot, fullPage: true });
  check(fs.statSync(screenshot).size > 0, "screenshot written to " + screenshot);

  // 6. A plan that is not what the orchestrator holds cannot be approved by a click.
  // The test rewrites the hostile plan in /v1/console/plans as a lying
  // orchestrator (or a change between display and click) would: first with
  // a review digest that does not match the shown inputs (the page refuses to
  // sign), then with a matching one (the approve endpoint refuses the pin).
  const shownTitle = "a harmless title";
  let consistent = false;
  let lyingDigest = null;
  await page.route("**/v1/console/plans", async (route) => {
    const response = await route.fetch();
    const plans = await response.json();
    for (const plan of plans) {
      if (plan.id !== hostileId) continue;
      plan.steps[0].inputs = { title: shownTitle };
      if (consistent) {
        plan.review_digest = await page.evaluate((p) => window.privateWorkerConsole.reviewDigest(p), plan);
        lyingDigest = plan.review_digest;
      }
    }
    await route.fulfill({ response, json: plans });
  });
  const message = `${card(hostileId)} .message`;
  await until(async () => (await page.textContent(card(hostileId))).includes(shownTitle), "the card shows the rewritten inputs");
  await page.click(`${card(hostileId)} button.approve`);
  await until(async () => (await page.textContent(message)).includes("nothing signed"), "the page refuses to sign");
  check(true, "the page signs nothing when its review digest differs from the orchestrator's");
  consistent = true;
  // With a digest that matches the rewritten inputs, the plan is no longer
  // the one this page first showed: the card says so and cannot approve it.
  await until(async () => lyingDigest && (await page.textContent(`${card(hostileId)} .digest`)).includes(lyingDigest), "the card shows the rewritten digest");
  check((await page.textContent(card(hostileId))).includes("changed since it was first shown"), "the card says the plan changed since it was first shown");
  check(await page.isDisabled(`${card(hostileId)} button.approve`), "a plan whose digest changed cannot be approved from the page");
  await page.unroute("**/v1/console/plans");

  // 7. What a click signs is what its card drew: a later list that breaks
  // the page (a sibling plan without steps) while the plan's inputs change
  // leaves the old card, and its click signs the old, drawn content. The
  // approval is captured and never reaches the orchestrator.
  await until(async () => !(await page.textContent(card(hostileId))).includes(shownTitle), "the card shows the real inputs again");
  const drawnDigest = (await page.textContent(`${card(hostileId)} .digest`)).replace("review digest ", "").trim();
  await page.route("**/v1/console/plans", async (route) => {
    const response = await route.fetch();
    const plans = await response.json();
    for (const plan of plans) {
      if (plan.id !== hostileId) continue;
      plan.steps[0].inputs = { title: shownTitle };
      plan.review_digest = await page.evaluate((p) => window.privateWorkerConsole.reviewDigest(p), plan);
    }
    plans.push({ ...plans[0], id: "broken-" + plans[0].id, steps: null });
    await route.fulfill({ response, json: plans });
  });
  let signed = null;
  await page.route("**/v1/plans/*/approve", async (route) => {
    signed = JSON.parse(route.request().postData() || "{}");
    await route.abort();
  });
  await until(async () => (await page.textContent("#status")).includes("Could not refresh"), "the broken list fails the refresh");
  check(!(await page.textContent(card(hostileId))).includes(shownTitle), "the old card stays, with the inputs it drew");
  await page.click(`${card(hostileId)} button.approve`);
  await until(async () => signed !== null, "the click sends an approval");
  check(signed.expect_digest === drawnDigest, "the click signs the drawn plan (digest " + signed.expect_digest + "), not the later list's");
  await page.unroute("**/v1/plans/*/approve");
  await page.unroute("**/v1/console/plans");
  check(errors.length === 0, "no script error in the page" + (errors.length ? ": " + errors.join("; ") : ""));
} catch (e) {
  console.log("FAILED " + (e.message || e).split("\n")[0]);
  const status = await page.textContent("#status").catch(() => "(no page)");
  console.log("page status: " + status);
  if (errors.length) console.log("page errors: " + errors.join("; "));
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-failed.png"), fullPage: true }).catch(() => {});
  exitCode = 1;
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(exitCode);
