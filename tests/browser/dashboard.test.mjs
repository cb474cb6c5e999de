// Real-browser tests of the operator dashboard and the consumer portal.
//
// Starts the real `clientele` binary (CLIENTELE_BIN, else target/debug or target/release) with a
// loopback upstream, makes traffic through the gateway (successes, 404s, 500s, 429s) and backfills
// events over the last hours, then drives Debian's Chromium with playwright-core: sign-in, every
// page, numbers against the admin API, sorting and filters, keyboard use, sign-out, and portal
// isolation. Screenshots go to target/browser-artifacts/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, existsSync, rmSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import http from "node:http";
import net from "node:net";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const artifacts = join(root, "target", "browser-artifacts");
const ADMIN_TOKEN = "browser-test-admin-token-0123456789";
// axe-core, the accessibility rules engine, run inside each page.
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

let server, upstream, browser, dataDir, admin, gateway;
const keys = {};

function binary() {
  const candidates = [
    process.env.CLIENTELE_BIN,
    join(root, "target", "debug", "clientele"),
    join(root, "target", "release", "clientele"),
  ].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`no clientele binary; run cargo build first (looked in ${candidates.join(", ")})`);
  return found;
}

function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function api(path, { method = "GET", body, token = ADMIN_TOKEN, base = admin } = {}) {
  const headers = { authorization: `Bearer ${token}` };
  let payload;
  if (body !== undefined) {
    headers["content-type"] = typeof body === "string" ? "application/x-ndjson" : "application/json";
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  const res = await fetch(base + path, { method, headers, body: payload, redirect: "manual" });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text, headers: res.headers };
}

async function viaGateway(key, path) {
  const res = await fetch(gateway + path, { headers: { "x-api-key": key } });
  await res.arrayBuffer();
  return res.status;
}

// Formatting as the pages do (crates/clientele-ui/src/html.rs), to compare what people see.
const int = (n) => n.toLocaleString("en-US");
function pct(share) {
  const p = share * 100;
  if (p === 0) return "0%";
  return p < 10 ? `${p.toFixed(2)}%` : `${p.toFixed(1)}%`;
}
function ms(v) {
  if (v === null || v === undefined) return "—";
  if (v >= 1000) return `${(v / 1000).toFixed(2)} s`;
  if (v >= 100) return `${v.toFixed(0)} ms`;
  return `${v.toFixed(1)} ms`;
}

async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  // The upstream: /fail answers 500, /missing 404, anything else 200 after a short, varying delay.
  let n = 0;
  upstream = http.createServer((req, res) => {
    n += 1;
    const status = req.url.startsWith("/fail") ? 500 : req.url.startsWith("/missing") ? 404 : 200;
    setTimeout(() => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify({ path: req.url }));
    }, (n % 7) * 3);
  });
  await new Promise((ok) => upstream.listen(0, "127.0.0.1", ok));
  const upPort = upstream.address().port;
  const [gwPort, adPort] = [await freePort(), await freePort()];
  dataDir = mkdtempSync(join(tmpdir(), "clientele-browser-"));
  const config = join(dataDir, "clientele.toml");
  writeFileSync(
    config,
    `[gateway]
listen = "127.0.0.1:${gwPort}"

[admin]
listen = "127.0.0.1:${adPort}"
token = "${ADMIN_TOKEN}"

[storage]
data_dir = "${join(dataDir, "data")}"

[[apis]]
name = "shop"
upstream = "http://127.0.0.1:${upPort}"
prefix = "/"

[plans.free]
rate_per_second = 2
burst = 4
quota_per_day = 500

[plans.free.policy]
max_networks_per_day = 3

[plans.pro]
rate_per_second = 200
burst = 400
quota_per_day = 100000
`,
  );
  server = spawn(binary(), ["serve", "--config", config], {
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  admin = `http://127.0.0.1:${adPort}`;
  gateway = `http://127.0.0.1:${gwPort}`;
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${admin}/healthz`)).ok) break;
    } catch { /* not up yet */ }
    if (i > 100) throw new Error("clientele did not start");
    await sleep(100);
  }

  const people = [
    { id: "alpha", plan: "pro", team: "retail", use_case: "storefront", name: "Alpha Shops" },
    { id: "beta", plan: "free", team: "partners", use_case: "mobile", name: "Beta Mobile" },
    { id: "gamma", plan: "pro", team: "retail", use_case: "analytics", name: "Gamma Insights" },
  ];
  for (const p of people) {
    assert.equal((await api("/v1/consumers", { method: "POST", body: p })).status, 201);
    const k = await api(`/v1/consumers/${p.id}/keys`, { method: "POST", body: { name: "browser-test" } });
    assert.equal(k.status, 201);
    keys[p.id] = k.json;
  }

  // History over the last 20 hours, so charts have a shape: back-dated events by POST /v1/events.
  const now = Date.now();
  const lines = [];
  const routes = [["GET", "/pets/{id}"], ["POST", "/orders"], ["GET", "/search"]];
  for (let i = 0; i < 600; i++) {
    const consumer = ["alpha", "alpha", "gamma", "beta"][i % 4];
    const [method, route] = routes[i % 3];
    const ts = now - 20 * 3600_000 + Math.floor((i / 600) * 19.5 * 3600_000);
    // gamma's orders fail: its integration is broken, an error concentrated in one consumer.
    const status = consumer === "gamma" && route === "/orders" ? 500 : i % 29 === 0 ? 404 : 200;
    const latency = 8 + (i % 13) * 4 + (i % 50 === 0 ? 400 : 0);
    lines.push(JSON.stringify({ id: `bt-${i}`, ts, consumer, api: "shop", method, path: route.replace("{id}", String(i)), route, status, latency_ms: latency }));
  }
  // beta's key used from five networks in the last hour: its free plan allows three a day.
  for (let n = 0; n < 5; n++) {
    lines.push(JSON.stringify({ id: `bt-net-${n}`, ts: now - 600_000 + n, consumer: "beta", api: "shop", method: "GET", path: "/pets/1", route: "/pets/{id}", status: 200, latency_ms: 5, client_ip: `198.51.${n}.9` }));
  }
  // LLM traffic: alpha on a priced model, beta on one without a price (unpriced, never $0).
  for (let n = 0; n < 6; n++) {
    const [consumer, model, cost] = n % 3 === 2 ? ["beta", "local-model", undefined] : ["alpha", "gpt-4o-mini", 0.0000255];
    lines.push(JSON.stringify({ id: `bt-llm-${n}`, ts: now - 1800_000 + n, consumer, api: "shop", method: "POST", path: "/v1/chat/completions", route: "/v1/chat/completions", status: 200, latency_ms: 300, model, tokens_in: 10 + n, tokens_out: 40, cost_usd: cost }));
  }
  const ingest = await api("/v1/events", { method: "POST", body: lines.join("\n") });
  assert.equal(ingest.status, 202, ingest.text);

  // Live traffic through the gateway: successes, 404s and 500s, and beta over its free plan.
  for (let i = 0; i < 30; i++) await viaGateway(keys.alpha.key, `/pets/${i}`);
  for (let i = 0; i < 4; i++) await viaGateway(keys.alpha.key, "/fail/charge");
  await viaGateway(keys.alpha.key, "/missing/thing");
  // beta retries without backing off: far over its free plan's 2/s, most answers are 429.
  const burst = [];
  for (let round = 0; round < 4; round++) {
    burst.push(...(await Promise.all(Array.from({ length: 20 }, (_, i) => viaGateway(keys.beta.key, `/pets/${i}`)))));
  }
  assert.ok(burst.filter((s) => s === 429).length >= 40, `beta's bursts should be rate-limited: ${burst}`);

  // Accepted events are visible to the stats within 2 s; wait until the totals stop moving.
  let last = "";
  for (let i = 0; i < 40; i++) {
    const s = await api("/v1/stats/consumers");
    const sig = JSON.stringify(s.json.consumers.map((c) => [c.consumer, c.requests]));
    if (sig === last && s.json.consumers.length === 3) break;
    last = sig;
    await sleep(500);
  }

  // Run the detectors now rather than waiting for their minute.
  const evaluated = await api("/v1/findings/evaluate", { method: "POST" });
  assert.equal(evaluated.status, 200, evaluated.text);

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  upstream?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function signedIn() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(8000);
  await page.goto(`${admin}/`);
  await page.getByLabel("Admin token").fill(ADMIN_TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${admin}/`);
  return { context, page };
}

test("sign-in: pages redirect to it, a wrong token is refused, the cookie is HttpOnly and SameSite=Strict", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(8000);
  await page.goto(`${admin}/routes?range=7d`);
  assert.match(page.url(), /\/login\?next=/);
  await shot(page, "01-sign-in");
  await page.getByLabel("Admin token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await assert.doesNotReject(page.getByRole("alert").filter({ hasText: "wrong" }).waitFor());
  await page.getByLabel("Admin token").fill(ADMIN_TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${admin}/routes?range=7d`);
  const cookie = (await context.cookies()).find((c) => c.name === "clientele_admin");
  assert.ok(cookie, "session cookie set");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.ok(!cookie.value.includes(ADMIN_TOKEN));
  await context.close();
});

test("overview: the headline numbers are the API's", async () => {
  const { context, page } = await signedIn();
  const stats = (await api("/v1/stats/consumers")).json.consumers;
  const requests = stats.reduce((a, c) => a + c.requests, 0);
  const errors = stats.reduce((a, c) => a + c.errors_4xx + c.errors_5xx, 0);
  const limited = stats.reduce((a, c) => a + c.rate_limited, 0);
  assert.equal(await page.locator('[data-metric="requests"]').textContent(), int(requests));
  assert.equal(await page.locator('[data-metric="error_rate"]').textContent(), pct(errors / requests));
  assert.equal(await page.locator('[data-metric="rate_limited"]').textContent(), int(limited));
  assert.equal(await page.locator('[data-metric="consumers"]').textContent(), "3");
  // Two charts with axes, and the most erroring consumer listed.
  assert.equal(await page.locator("figure.chart svg").count(), 2);
  const most = [...stats].sort((a, b) => b.errors_4xx + b.errors_5xx - (a.errors_4xx + a.errors_5xx))[0];
  assert.equal(await page.locator("#h-err + * tbody tr").first().getAttribute("data-consumer"), most.consumer);
  await shot(page, "02-overview");
  // Pointing at a chart reads out the step under the pointer (progressive enhancement).
  const svg = page.locator("#all-traffic svg");
  const box = await svg.boundingBox();
  await page.mouse.move(box.x + box.width * 0.97, box.y + box.height / 2);
  const tip = page.locator("#all-traffic .chart-tip");
  await tip.waitFor({ state: "visible" });
  assert.match(await tip.textContent(), /UTC.*Requests: \d/);
  await page.locator("#all-traffic").screenshot({ path: join(artifacts, "02b-chart-hover.png") });
  await context.close();
});

test("consumers: every row matches the API, sorting and filters work without script", async () => {
  const { context, page } = await signedIn();
  await page.getByRole("link", { name: "Consumers", exact: true }).click();
  await page.waitForURL(/\/consumers/);
  const stats = (await api("/v1/stats/consumers")).json.consumers;
  for (const c of stats) {
    const row = page.locator(`tr[data-consumer="${c.consumer}"]`);
    assert.equal(await row.locator('[data-col="requests"]').textContent(), int(c.requests), c.consumer);
    assert.equal(await row.locator('[data-col="error_rate"]').textContent(), pct(c.error_rate), c.consumer);
    assert.equal(await row.locator('[data-col="rate_limited"]').textContent(), int(c.rate_limited), c.consumer);
    assert.equal(await row.locator('[data-col="p99"]').textContent(), ms(c.p99_ms), c.consumer);
  }
  // Sort by error rate, highest first: the header is a link.
  await page.getByRole("link", { name: /^Error rate/ }).click();
  await page.waitForURL(/sort=error_rate/);
  const order = await page.locator("tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.consumer));
  const expected = [...stats].sort((a, b) => b.error_rate - a.error_rate || a.consumer.localeCompare(b.consumer)).map((c) => c.consumer);
  assert.deepEqual(order, expected);
  assert.equal(await page.locator('th[aria-sort="descending"]').count(), 1);
  await shot(page, "03-consumers-by-error-rate");
  // Filter by plan (the select submits its form).
  await page.getByLabel("Plan", { exact: true }).selectOption("free");
  await page.waitForURL(/plan=free/);
  const filtered = await page.locator("tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.consumer));
  assert.deepEqual(filtered, ["beta"]);
  await context.close();
});

test("one consumer: totals, routes, recent errors, limits and keys (no plaintext)", async () => {
  const { context, page } = await signedIn();
  await page.goto(`${admin}/consumers/alpha`);
  const d = (await api("/v1/stats/consumers/alpha")).json;
  assert.equal(await page.locator('[data-metric="requests"]').textContent(), int(d.requests));
  assert.equal(await page.locator('[data-metric="errors_5xx"]').textContent(), int(d.errors_5xx));
  assert.equal(await page.locator('[data-metric="p99"]').textContent(), ms(d.p99_ms));
  assert.equal(await page.locator("#h-routes + * tbody tr").count(), d.routes.length);
  const events = (await api("/v1/consumers/alpha/events?status=5xx")).json.events;
  assert.ok(events.length > 0);
  const errorsTable = page.locator("section:has(#h-errors) table tbody");
  assert.ok((await errorsTable.textContent()).includes(events[0].path));
  // Narrowed to 5xx: exactly the API's 5xx events (up to the 20 shown).
  await page.getByRole("link", { name: "5xx", exact: true }).click();
  await page.waitForURL(/errors=5xx/);
  assert.equal(await errorsTable.locator("tr").count(), Math.min(20, events.length));
  const lim = (await api("/v1/consumers/alpha/limits")).json;
  assert.equal(await page.locator('[data-metric="quota_day_remaining"]').textContent(), int(lim.day.remaining));
  // Its AI usage, as GET /v1/stats/models answers it.
  const model = (await api("/v1/stats/models?consumer=alpha")).json.models[0];
  const aiRow = page.locator("#h-ai ~ * tbody tr", { hasText: model.model });
  assert.equal(await aiRow.locator("td").nth(2).textContent(), int(model.tokens_in));
  assert.equal(await aiRow.locator("td").nth(4).textContent(), `$${model.cost_usd.toFixed(6)}`);
  const html = await page.content();
  assert.ok(html.includes(keys.alpha.prefix), "the key's prefix is shown");
  assert.ok(!html.includes(keys.alpha.key), "the key itself never is");
  assert.equal(await page.locator("figure.chart svg").count(), 3, "traffic, latency, share of rate");
  await shot(page, "04-consumer-alpha");
  await page.goto(`${admin}/consumers/beta`);
  await shot(page, "05-consumer-beta-rate-limited");
  await context.close();
});

test("routes: error concentration as the API computes it", async () => {
  const { context, page } = await signedIn();
  await page.getByRole("link", { name: "Routes", exact: true }).click();
  await page.waitForURL(/\/routes/);
  const routes = (await api("/v1/stats/routes")).json.routes;
  assert.equal(await page.locator("table.routes tbody tr").count(), routes.length);
  for (const r of routes) {
    const row = page.locator(`tr[data-route="${r.method} ${r.route}"]`).filter({ hasText: r.api });
    assert.equal(await row.locator('[data-col="requests"]').textContent(), int(r.requests));
    assert.equal(Number(await row.locator('[data-col="error_share"]').getAttribute("data-value")), r.error_share_top_consumer);
  }
  const orders = page.locator('tr[data-route="POST /orders"]');
  assert.match(await orders.textContent(), /from gamma/);
  await shot(page, "06-routes");
  await context.close();
});

test("findings: the page lists what the API lists, on the overview and per consumer too", async () => {
  const { context, page } = await signedIn();
  const from = new Date(Date.now() - 24 * 3600_000).toISOString();
  const found = (await api(`/v1/findings?from=${from}`)).json.findings;
  const beta = found.filter((f) => f.consumer === "beta" && f.kind === "rate_limited");
  assert.equal(beta.length, 1, `beta kept hitting its limit: ${JSON.stringify(found)}`);
  // The overview shows the most recent ones and links to the rest.
  assert.ok((await page.locator("#h-findings").textContent()).includes("Recent findings"));
  assert.equal(await page.locator("table.findings tbody tr").count(), Math.min(6, found.length));
  await page.getByRole("link", { name: "Findings", exact: true }).click();
  await page.waitForURL(/\/findings/);
  const ids = await page.locator("table.findings tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.finding));
  assert.deepEqual([...ids].sort(), found.map((f) => f.id).sort());
  const count = (sev) => String(found.filter((f) => f.severity === sev).length);
  assert.equal(await page.locator('[data-metric="findings_critical"]').textContent(), count("critical"));
  assert.equal(await page.locator('[data-metric="findings_warning"]').textContent(), count("warning"));
  const row = page.locator(`tr[data-finding="${beta[0].id}"]`);
  assert.ok((await row.textContent()).includes(beta[0].summary));
  await row.getByText("Numbers").click();
  await shot(page, "07-findings");
  // Filtered by consumer: only beta's.
  await page.getByLabel("Consumer", { exact: true }).selectOption("beta");
  await page.waitForURL(/consumer=beta/);
  const betaIds = await page.locator("table.findings tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.finding));
  assert.deepEqual(betaIds.sort(), found.filter((f) => f.consumer === "beta").map((f) => f.id).sort());
  await page.goto(`${admin}/consumers/beta`);
  assert.equal(await page.locator(`#h-found + * tr[data-finding="${beta[0].id}"]`).count(), 1);
  await context.close();
});

test("governance: the riskiest consumers and their factors as the API scores them, and the policy finding", async () => {
  const { context, page } = await signedIn();
  await page.getByRole("link", { name: "Governance", exact: true }).click();
  await page.waitForURL(/\/governance/);
  const from = encodeURIComponent(new Date(Date.now() - 24 * 3600_000).toISOString());
  const risk = (await api(`/v1/governance/risk?from=${from}`)).json.consumers;
  assert.ok(risk.length >= 3, JSON.stringify(risk));
  const rows = await page.locator("#risk tbody tr").evaluateAll((trs) =>
    trs.map((r) => [r.dataset.consumer, Number(r.querySelector("[data-score]").dataset.score)]));
  assert.deepEqual(rows, risk.map((r) => [r.consumer, r.score]));
  // beta broke its plan's max_networks_per_day: the finding is listed with its numbers.
  const found = (await api(`/v1/findings?kind=policy_violation&consumer=beta`)).json.findings;
  assert.equal(found.length, 1, JSON.stringify(found));
  assert.equal(found[0].evidence.rules[0].rule, "max_networks_per_day");
  const row = page.locator(`tr[data-finding="${found[0].id}"]`);
  assert.ok((await row.textContent()).includes(found[0].summary));
  const betaRisk = risk.find((r) => r.consumer === "beta");
  assert.ok(betaRisk.factors.some((f) => f.name === "governance_findings"), JSON.stringify(betaRisk));
  await shot(page, "08-governance");
  // The consumer's page shows its risk and its behaviour per day.
  await page.goto(`${admin}/consumers/beta`);
  assert.equal(await page.locator('[data-metric="risk_score"]').textContent(), String(Math.round(betaRisk.score)));
  assert.ok((await page.locator("#features tbody tr").count()) >= 1);
  await context.close();
});

test("reports: portfolio, outreach, pricing and SLA pages show what the API answers", async () => {
  // A release marker shows on the overview's charts.
  const rel = await api("/v1/releases", { method: "POST", body: { api: "shop", version: "v-browser", at: Date.now() - 2 * 3600_000 } });
  assert.equal(rel.status, 201, rel.text);
  const { context, page } = await signedIn();
  assert.equal(await page.locator("#all-traffic .marker").count(), 1);
  assert.ok((await page.locator("#all-traffic p.markers").textContent()).includes("shop v-browser"));
  await page.getByRole("link", { name: "Portfolio", exact: true }).click();
  await page.waitForURL(/\/portfolio/);
  const p = (await api("/v1/portfolio")).json;
  for (const k of ["active", "active_prev", "new", "churned", "reactivated", "stagnating"]) {
    assert.equal(await page.locator(`[data-metric="${k}"]`).textContent(), String(p.consumers[k]), k);
  }
  assert.ok(p.consumers.active >= 3, JSON.stringify(p.consumers));
  const shop = p.apis.find((a) => a.api === "shop");
  assert.equal(
    await page.locator('tr[data-api="shop"] [data-metric="active_consumers"]').textContent(),
    `${shop.active_consumers} (${shop.active_consumers_prev})`,
  );
  // The month picker reloads the page for another month.
  await page.getByLabel("Month", { exact: true }).fill("2026-01");
  await page.getByRole("button", { name: "Show" }).click();
  await page.waitForURL(/month=2026-01/);
  assert.equal(await page.locator("h1").textContent(), "Portfolio 2026-01");
  await shot(page, "12-portfolio");

  // Outreach: beta's retry storm (its rate_limited finding) puts it on the list, with a draft.
  await page.getByRole("link", { name: "Outreach", exact: true }).click();
  await page.waitForURL(/\/reports\/outreach/);
  const o = (await api("/v1/reports/outreach")).json;
  const cards = await page.locator("#outreach > li").evaluateAll((lis) => lis.map((li) => li.dataset.consumer));
  assert.deepEqual(cards, o.items.map((i) => i.consumer));
  assert.ok(cards.includes("beta"), JSON.stringify(o));
  const beta = o.items.find((i) => i.consumer === "beta");
  assert.equal(beta.reason, "retry_storm");
  assert.equal(await page.locator('#outreach > li[data-consumer="beta"] blockquote').textContent(), beta.message);
  assert.ok(beta.message.startsWith("Hi Beta Mobile,") && beta.message.includes("429"), beta.message);
  await shot(page, "13-outreach");

  await page.getByRole("link", { name: "Pricing", exact: true }).click();
  await page.waitForURL(/\/reports\/pricing/);
  const pr = (await api("/v1/reports/pricing")).json;
  assert.equal(await page.locator("#pricing tbody tr").count(), pr.items.length);

  await page.getByRole("link", { name: "SLA", exact: true }).click();
  await page.waitForURL(/\/reports\/sla/);
  const sla = (await api("/v1/reports/sla")).json;
  const rows = await page.locator("#sla tbody tr").evaluateAll((trs) => trs.map((r) => r.dataset.consumer));
  assert.deepEqual(rows, sla.items.map((i) => i.consumer));
  assert.ok(rows.length >= 3);
  await shot(page, "14-sla");

  // An agent session (session header) reading the same pet six times.
  const loop = Array.from({ length: 6 }, (_, i) => JSON.stringify({
    id: `bt-loop-${i}`, ts: Date.now() - 60_000 + i, consumer: "delta", api: "shop", method: "GET",
    path: "/pets/7", route: "/pets/{id}", status: 200, latency_ms: 5, session_id: "agent-1",
  }));
  assert.equal((await api("/v1/events", { method: "POST", body: loop.join("\n") })).status, 202);
  await page.getByRole("link", { name: "Agents", exact: true }).click();
  await page.waitForURL(/\/reports\/agents/);
  const agents = (await api("/v1/reports/agents")).json;
  assert.equal(await page.locator("section[data-consumer]").count(), agents.items.length);
  assert.deepEqual(agents.items.map((i) => i.consumer), ["delta"]);
  assert.equal(await page.locator('section[data-consumer="delta"] [data-metric="saved_round_trips"]').textContent(), "5");
  await context.close();
});

test("ai: tokens and cost per consumer and per model as GET /v1/stats/models answers", async () => {
  const { context, page } = await signedIn();
  await page.getByRole("link", { name: "AI", exact: true }).click();
  await page.waitForURL(`${admin}/ai`);
  const rows = (await api("/v1/stats/models")).json.models;
  assert.ok(rows.length >= 2, JSON.stringify(rows));
  const sum = (k) => rows.reduce((a, r) => a + r[k], 0);
  assert.equal(await page.locator('[data-metric="ai_tokens_in"]').textContent(), int(sum("tokens_in")));
  assert.equal(await page.locator('[data-metric="ai_tokens_out"]').textContent(), int(sum("tokens_out")));
  assert.equal(await page.locator('[data-metric="ai_unpriced"]').textContent(), int(sum("unpriced_requests")));
  const perConsumer = page.locator("table", { has: page.locator("caption", { hasText: "Cost per consumer" }) });
  const alpha = rows.filter((r) => r.consumer === "alpha");
  const alphaRow = perConsumer.locator("tbody tr", { hasText: "alpha" });
  assert.equal(await alphaRow.locator("td").nth(2).textContent(), int(alpha.reduce((a, r) => a + r.tokens_in, 0)));
  // Tokens in, of which cache reads and cache writes, tokens out, of which reasoning, cost.
  assert.equal(await alphaRow.locator("td").nth(3).textContent(), int(alpha.reduce((a, r) => a + (r.tokens_cached ?? 0), 0)));
  assert.equal(await alphaRow.locator("td").nth(5).textContent(), int(alpha.reduce((a, r) => a + r.tokens_out, 0)));
  const alphaCost = alpha.reduce((a, r) => a + r.cost_usd, 0);
  assert.equal(await alphaRow.locator("td").nth(7).textContent(), `$${alphaCost.toFixed(6)}`);
  // The model without a price reads "unpriced", never $0.
  const perModel = page.locator("table", { has: page.locator("caption", { hasText: "Cost per model" }) });
  assert.equal(await perModel.locator("tbody tr", { hasText: "local-model" }).locator("td").nth(7).textContent(), "unpriced");
  await shot(page, "07b-ai");
  await context.close();
});

test("keyboard: skip link, navigation by Tab and Enter, visible time-range picker", async () => {
  const { context, page } = await signedIn();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.id), "main");
  await page.goto(`${admin}/`);
  let reached = false;
  for (let i = 0; i < 6 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = (await page.evaluate(() => document.activeElement.textContent)) === "Consumers";
  }
  assert.ok(reached, "the Consumers link is reachable with Tab");
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/consumers/);
  // The time-range picker: choosing a preset reloads the page with it.
  await page.getByLabel("Time range", { exact: true }).selectOption("7d");
  await page.waitForURL(/range=7d/);
  assert.equal(await page.getByLabel("Time range", { exact: true }).inputValue(), "7d");
  await context.close();
});

/// Runs axe's WCAG 2.1 A and AA rules (contrast, labels, names, structure) on the open page.
async function axe(page) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }),
  );
  return result.violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
}

test("accessibility: no WCAG 2.1 A/AA violations on any page (axe-core)", async () => {
  // axe is injected by the test, so the test's context lets it past the page's CSP.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
  const page = await context.newPage();
  page.setDefaultTimeout(8000);
  await page.goto(`${admin}/login`);
  const problems = {};
  problems["/login"] = await axe(page);
  await page.getByLabel("Admin token").fill(ADMIN_TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${admin}/`);
  for (const path of ["/", "/consumers", "/consumers/alpha", "/consumers/beta", "/routes", "/findings", "/governance", "/deprecations", "/ai", "/portfolio", "/reports/outreach", "/reports/pricing", "/reports/sla", "/reports/agents"]) {
    await page.goto(admin + path);
    problems[path] = await axe(page);
  }
  await page.goto(`${admin}/portal/login`);
  problems["/portal/login"] = await axe(page);
  await page.getByLabel("API key").fill(keys.gamma.key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${admin}/portal`);
  problems["/portal"] = await axe(page);
  const bad = Object.entries(problems).filter(([, v]) => v.length > 0);
  assert.deepEqual(bad, [], JSON.stringify(bad, null, 2));
  await context.close();
});

test("sign-out needs the CSRF token and ends the session", async () => {
  const { context, page } = await signedIn();
  const cookie = (await context.cookies()).find((c) => c.name === "clientele_admin");
  // A post without the token is refused and the session survives it.
  const forged = await fetch(`${admin}/logout`, {
    method: "POST",
    headers: { cookie: `clientele_admin=${cookie.value}`, "content-type": "application/x-www-form-urlencoded" },
    body: "csrf=wrong",
    redirect: "manual",
  });
  assert.equal(forged.status, 403);
  await page.reload();
  assert.equal(new URL(page.url()).pathname, "/");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/login/);
  const after = await fetch(`${admin}/`, { headers: { cookie: `clientele_admin=${cookie.value}` }, redirect: "manual" });
  assert.equal(after.status, 303, "the old session id no longer works");
  await context.close();
});

test("portal: a consumer sees its own numbers only, and a revoked key's session ends", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(8000);
  await page.goto(`${admin}/portal`);
  assert.match(page.url(), /\/portal\/login/);
  await page.getByLabel("API key").fill("ck_this-is-not-a-real-key-000000");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "not known" }).waitFor();
  await shot(page, "08-portal-sign-in");
  await page.getByLabel("API key").fill(keys.beta.key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${admin}/portal`);
  const own = (await api("/portal/api/usage", { token: keys.beta.key })).json;
  const adminView = (await api("/v1/stats/consumers/beta")).json;
  assert.equal(own.consumer, "beta");
  assert.equal(own.requests, adminView.requests);
  assert.equal(await page.locator('[data-metric="requests"]').textContent(), int(own.requests));
  assert.equal(await page.locator('[data-metric="rate_limited"]').textContent(), int(own.rate_limited));
  assert.equal(await page.locator('[data-metric="p99"]').textContent(), ms(own.p99_ms));
  const lim = (await api("/v1/consumers/beta/limits")).json;
  assert.equal(await page.locator('[data-metric="quota_day_remaining"]').textContent(), int(lim.day.remaining));
  // Its own AI usage: the unpriced model, as unpriced.
  const aiRow = page.locator("#h-ai ~ * tbody tr", { hasText: "local-model" });
  assert.equal(await aiRow.locator("td").nth(4).textContent(), "unpriced");
  const text = await page.locator("body").textContent();
  assert.ok(!text.includes("alpha") && !text.includes("gamma"), "no other consumer is named");
  assert.ok(text.includes(keys.beta.key_id), "its own keys are listed, by id and prefix");
  assert.ok(!text.includes(keys.alpha.key_id) && !text.includes(keys.alpha.prefix), "nobody else's");
  assert.ok(!(await page.content()).includes(keys.beta.key), "the key is not in the page");
  const cookies = await context.cookies();
  assert.ok(cookies.every((c) => !c.value.includes(keys.beta.key)), "the key is not in a cookie");
  await shot(page, "09-portal-beta");
  // No parameter or path shows anyone else.
  const res = await page.goto(`${admin}/portal?consumer=alpha`);
  assert.equal(res.status(), 400);
  const other = await page.goto(`${admin}/portal/consumers/alpha`);
  assert.notEqual(other.status(), 200);
  const dashboard = await page.goto(`${admin}/consumers/alpha`);
  assert.match(page.url(), /\/login/, `the portal session opens nothing on the dashboard (${dashboard.status()})`);
  // Revoking the key ends the session on the next request.
  assert.equal((await api(`/v1/keys/${keys.beta.key_id}`, { method: "DELETE" })).status, 200);
  await page.goto(`${admin}/portal`);
  assert.match(page.url(), /\/portal\/login/);
  await context.close();
});
