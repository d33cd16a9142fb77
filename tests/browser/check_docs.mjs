// Load pages of the built documentation site in headless Chromium and report, per page, how many
// plotly figures were drawn and which requests left 127.0.0.1.
//
// Usage: node check_docs.mjs CONFIG.json
// CONFIG: {"baseUrl": "http://127.0.0.1:PORT/", "pages": ["13_dashboard.html", ...],
//          "screenshotDir": folder, "result": JSON path, "userDataDir": empty folder, "timeoutMs": per page}
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS } from './chromium.mjs';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const result = { pages: {}, external: [], errors: [] };
const base = new URL(config.baseUrl);

const context = await chromium.launchPersistentContext(config.userDataDir, {
  executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS, viewport: { width: 1300, height: 1000 },
});
// The site must work offline: requests to any other host are blocked and recorded.
await context.route('**/*', (route) => {
  const url = new URL(route.request().url());
  if (url.protocol === 'data:' || url.host === base.host) return route.continue();
  result.external.push(route.request().url());
  return route.abort();
});
try {
  const page = context.pages()[0] || (await context.newPage());
  for (const name of config.pages) {
    const errors = [];
    const onError = (error) => errors.push(String(error));
    const onConsole = (message) => { if (message.type() === 'error') errors.push(message.text()); };
    page.on('pageerror', onError);
    page.on('console', onConsole);
    const response = await page.goto(new URL(name, base).href, { timeout: config.timeoutMs, waitUntil: 'load' });
    await page.waitForTimeout(1500);
    const figures = await page.evaluate(() => [...document.querySelectorAll('.plotly-graph-div')].map((graph) => ({
      id: graph.id,
      traces: graph.data ? graph.data.length : 0,
      svg: graph.querySelectorAll('svg.main-svg').length,
      width: graph.getBoundingClientRect().width,
    })));
    const plotlyLoaded = await page.evaluate(() => typeof window.Plotly === 'object' && typeof window.Plotly.newPlot === 'function');
    const mathjax = await page.evaluate(() => document.querySelectorAll('mjx-container').length);
    result.pages[name] = { status: response ? response.status() : null, figures, plotlyLoaded, mathjax, errors };
    if (figures.length) await page.locator('.plotly-graph-div').first().scrollIntoViewIfNeeded();
    await page.screenshot({ path: path.join(config.screenshotDir, name.replace(/[\/]/g, '_') + '.png'), fullPage: false });
    page.off('pageerror', onError);
    page.off('console', onConsole);
  }
} catch (error) {
  result.errors.push(String(error && error.stack ? error.stack : error));
} finally {
  fs.writeFileSync(config.result, JSON.stringify(result, null, 1));
  await context.close();
}
