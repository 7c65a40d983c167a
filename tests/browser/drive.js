#!/usr/bin/env node
// Drives Debian's headless Chromium through the Airflow 3 UI for tests/test_browser.py.
//
//   node drive.js connection-form   < config.json
//   node drive.js task-instance     < config.json
//   node drive.js tes-view          < config.json   (Airflow JWT in $AIRFLOW_TOKEN)
//   node drive.js task-log          < config.json
//
// The config (JSON on stdin) carries the Airflow URL, the screenshot folder and, for
// task-instance, the run and the TES basic-auth credentials. Prints one JSON object with
// what the page showed; the Python test makes the assertions. Exits 1 (message on stderr)
// when an element never appears, after saving a screenshot of the page as it was.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function readConfig() {
  return JSON.parse(fs.readFileSync(0, 'utf8'));
}

async function withPage(config, contextOptions, body) {
  // launch() gives every run a fresh temporary --user-data-dir and passes --headless.
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  try {
    const viewport = { width: 1400, height: config.viewport_height || 1000 };
    const context = await browser.newContext({ viewport, ...contextOptions });
    context.setDefaultTimeout(config.timeout_ms || 120000);
    context.setDefaultNavigationTimeout(config.timeout_ms || 120000);
    const page = await context.newPage();
    try {
      return await body(page, context);
    } catch (err) {
      const shot = path.join(config.screenshot_dir, `failure-${process.argv[2]}.png`);
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
      err.message += `\n(page ${page.url()}; screenshot ${shot})`;
      throw err;
    }
  } finally {
    await browser.close();
  }
}

// (1) The new-connection form with connection type "GA4GH TES": our conn-fields and relabeling.
async function visibleLabels(scope) {
  const labels = [];
  for (const label of await scope.locator('label').all()) {
    const text = (await label.innerText()).replace(/\s*\*$/, '').trim();
    if (text && (await label.isVisible())) labels.push(text);
  }
  return labels;
}

async function connectionForm(config) {
  return withPage(config, {}, async (page) => {
    await page.goto(`${config.airflow_url}/connections`);
    await page.getByRole('button', { name: 'Add Connection' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByRole('combobox', { name: 'Connection Type' }).fill('GA4GH');
    await page.getByRole('option', { name: config.connection_type_label, exact: true }).click();
    // "Standard Fields" opens first: host, login and password under our labels.
    const host = dialog.getByLabel(config.host_label, { exact: true });
    await host.waitFor();
    const hostPlaceholder = await host.getAttribute('placeholder');
    await dialog.getByLabel('Connection ID', { exact: false }).fill(config.conn_id);
    await host.fill(config.host_value);
    const standard = await visibleLabels(dialog);
    const standardShot = path.join(config.screenshot_dir, 'connection-form-tes-standard.png');
    await dialog.screenshot({ path: standardShot });
    // The extra fields sit in a collapsed section: open it, as a person would.
    await dialog.getByRole('button', { name: 'Extra Fields', exact: true }).click();
    await dialog.getByText(config.last_extra_label, { exact: true }).waitFor({ state: 'visible' });
    await page.waitForTimeout(500); // let the accordion animation settle before the screenshot
    // Grow the window to the whole dialog, so every extra field is on one screenshot.
    const needed = await dialog.evaluate((d) => d.getBoundingClientRect().top + d.scrollHeight + 80);
    const height = Math.max(page.viewportSize().height, Math.ceil(needed));
    await page.setViewportSize({ width: 1400, height });
    await page.waitForTimeout(300);
    const extra = await visibleLabels(dialog);
    const extraShot = path.join(config.screenshot_dir, 'connection-form-tes-extra.png');
    await page.screenshot({ path: extraShot, fullPage: true });
    return {
      standard_labels: standard,
      extra_labels: extra,
      host_placeholder: hostPlaceholder,
      screenshots: [standardShot, extraShot],
    };
  });
}

// (2) The finished task instance: its extra links, and the "TES Task" link followed.
async function taskInstance(config) {
  const funnelOrigin = new URL(config.tes_origin).origin;
  const contextOptions = {
    // The person following the link is logged in to the TES server: basic auth, to its origin only.
    httpCredentials: {
      username: config.tes_user,
      password: process.env.TES_PASSWORD || '',
      origin: funnelOrigin,
      send: 'always',
    },
  };
  return withPage(config, contextOptions, async (page, context) => {
    const run = encodeURIComponent(config.run_id);
    const tiUrl = `${config.airflow_url}/dags/${config.dag_id}/runs/${run}/tasks/${config.task_id}/details`;
    await page.goto(tiUrl);
    const heading = page.getByText('Extra Links', { exact: true });
    await heading.waitFor();
    const taskLink = page.getByRole('link', { name: 'TES Task', exact: true });
    await taskLink.waitFor();
    for (const name of config.expect_links || []) {
      await page.getByRole('link', { name, exact: true }).waitFor();
    }
    const links = {};
    for (const name of ['TES Task', 'TES Outputs']) {
      const link = page.getByRole('link', { name, exact: true });
      if ((await link.count()) > 0) links[name] = await link.first().getAttribute('href');
    }
    const stateText = page.getByText(/^(success|failed|running|deferred|queued|up_for_retry)$/).first();
    const state = (await stateText.innerText()).trim();
    const tiShot = path.join(config.screenshot_dir, 'task-instance-extra-links.png');
    await page.screenshot({ path: tiShot });

    // Follow the link as a person would: click it (it opens a new tab) and read what loads.
    const responses = [];
    context.on('response', (r) => {
      if (r.url() === links['TES Task']) responses.push(r);
    });
    const [popup] = await Promise.all([context.waitForEvent('page'), taskLink.click()]);
    await popup.waitForLoadState('load');
    const response = responses[0];
    const followShot = path.join(config.screenshot_dir, 'tes-task-link-followed.png');
    await popup.screenshot({ path: followShot });
    const body = (await popup.locator('body').innerText()).trim();
    return {
      page_url: tiUrl,
      state,
      links,
      followed: { url: popup.url(), status: response ? response.status() : null, body },
      screenshots: [tiShot, followShot],
    };
  });
}

// (3) The TES view, as the "TES tasks" menu entry opens it: the plugin page in an iframe.
async function tesView(config) {
  return withPage(config, {}, async (page, context) => {
    // Logged in as the UI logs in: the API server's JWT in the session cookie.
    await context.addCookies([{ name: '_token', value: process.env.AIRFLOW_TOKEN || '', url: config.airflow_url }]);
    await page.goto(`${config.airflow_url}/plugin/${config.url_route}`);
    const frame = page.frameLocator('iframe');
    const rows = frame.locator('tr[data-tes-task-id]');
    await rows.first().waitFor();
    await page.waitForTimeout(500); // let the UI's navigation settle before the screenshot
    const states = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.state));
    const counts = await frame
      .locator('li[data-count-state]')
      .evaluateAll((lis) => Object.fromEntries(lis.map((li) => [li.dataset.countState, Number(li.dataset.count)])));
    const iframeSrc = await page.locator('iframe').first().getAttribute('src');
    const shot = path.join(config.screenshot_dir, 'tes-view.png');
    await page.screenshot({ path: shot });
    return { iframe_src: iframeSrc, states, counts, screenshots: [shot] };
  });
}

// (4) A deferred task's Logs tab: the lines the trigger streams from the TES executor.
// Runs in the page: are `wanted` rendered log lines after line `after` ones with the marker?
// (The list is virtual: only the lines in view are in the DOM.)
function hasStreamed({ marker, after, wanted }) {
  const items = [...document.querySelectorAll('[data-testid^="virtualized-item-"]')];
  return items.filter((el) => Number(el.dataset.index) > after && el.innerText.includes(marker)).length >= wanted;
}

async function taskLog(config) {
  return withPage(config, {}, async (page) => {
    const run = encodeURIComponent(config.run_id);
    // The task instance page opens on its Logs tab.
    await page.goto(`${config.airflow_url}/dags/${config.dag_id}/runs/${run}/tasks/${config.task_id}`);
    const marker = config.streamed_marker;
    const streamed = page.locator('[data-testid^="virtualized-item-"]').filter({ hasText: marker });
    const shown = async () => (await streamed.allInnerTexts()).map((text) => text.replace(/\s+/g, ' ').trim());
    await page.waitForFunction(hasStreamed, { marker, after: -1, wanted: config.min_lines });
    const first = await shown();
    // The UI refetches the log of a task that has not finished: a newer line shows up by itself.
    const last = Math.max(...(await streamed.evaluateAll((els) => els.map((el) => Number(el.dataset.index)))));
    await page.waitForFunction(hasStreamed, { marker, after: last, wanted: 1 });
    await streamed.last().scrollIntoViewIfNeeded();
    await page.waitForTimeout(300); // let the virtual list settle before the screenshot
    const lines = await shown();
    // The state badge next to the task's name, as the page showed it with these lines.
    const badge = page.getByText(/^(running|deferred|success|failed|queued|scheduled)$/i).first();
    const state = (await badge.innerText()).trim().toLowerCase();
    const shot = path.join(config.screenshot_dir, 'task-log-live-lines.png');
    await page.screenshot({ path: shot });
    return { first_lines: first, lines, state, screenshots: [shot] };
  });
}

async function main() {
  const mode = process.argv[2];
  const steps = {
    'connection-form': connectionForm,
    'task-instance': taskInstance,
    'tes-view': tesView,
    'task-log': taskLog,
  };
  if (!steps[mode]) throw new Error(`usage: drive.js ${Object.keys(steps).join('|')} < config.json`);
  const config = readConfig();
  fs.mkdirSync(config.screenshot_dir, { recursive: true });
  const result = await steps[mode](config);
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
