// Open a notebook in JupyterLab with headless Chromium, run it, and check the live dashboard.
//
// Usage: node run_notebook.mjs CONFIG.json
// CONFIG: {"url": lab URL of the notebook with ?token=..., "waitMarker": text of the cell that waits
//          for training, "screenshot": PNG path, "result": JSON path, "userDataDir": empty folder,
//          "timeoutMs": overall limit}
// JupyterLab must run with --LabApp.expose_app_in_browser=True so that window.jupyterapp exists.
// The result JSON lists what was observed; the Python test (tests/test_browser_notebook.py) asserts on it.
import fs from 'node:fs';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS } from './chromium.mjs';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const result = { observations: [], errors: [], console: [] };
const deadline = Date.now() + config.timeoutMs;
const remaining = () => Math.max(deadline - Date.now(), 1000);

function save() {
  fs.writeFileSync(config.result, JSON.stringify(result, null, 1));
}

// The dashboard as the page shows it: status line, pause button, and per figure the number of
// plotted points (x values summed over traces) and the heatmap values.
async function observe(page) {
  return page.evaluate(() => {
    const root = document.querySelector('.rc-nbkit-dashboard');
    if (!root) return null;
    const figures = {};
    for (const name of ['angles', 'angle-history', 'curriculum', 'losses', 'training']) {
      const graph = root.querySelector(`.js-plotly-plot.rc-nbkit-figure-${name}, .rc-nbkit-figure-${name} .js-plotly-plot`);
      if (!graph) continue;
      const data = graph.data || [];
      figures[name] = {
        traces: data.length,
        points: data.reduce((sum, trace) => sum + (trace.x ? trace.x.length : 0), 0),
        heatmap: data.filter((trace) => trace.type === 'heatmap').map((trace) => JSON.stringify(trace.z)).join(''),
        svg: graph.querySelectorAll('svg.main-svg').length,
      };
    }
    const pause = root.querySelector('.rc-nbkit-pause');
    const stop = root.querySelector('.rc-nbkit-stop');
    const status = root.querySelector('.rc-nbkit-dashboard-status');
    return {
      time: Date.now(),
      status: status ? status.textContent : null,
      pauseLabel: pause ? pause.textContent.trim() : null,
      pauseDisabled: pause ? pause.disabled : null,
      stopDisabled: stop ? stop.disabled : null,
      figures,
    };
  });
}

function stepOf(observation) {
  const match = observation && observation.status && observation.status.match(/step (\d+)/);
  return match ? Number(match[1]) : -1;
}

async function waitFor(page, predicate, description, pollMs = 500) {
  while (Date.now() < deadline) {
    const observation = await observe(page);
    if (observation) result.observations.push(observation);
    if (predicate(observation)) return observation;
    await page.waitForTimeout(pollMs);
  }
  throw new Error(`timed out waiting for ${description}`);
}

async function kernelIdle(page) {
  return page.evaluate(() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return Boolean(kernel) && kernel.status === 'idle' && !panel.sessionContext.pendingInput;
  });
}

const context = await chromium.launchPersistentContext(config.userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: CHROMIUM_ARGS,
  viewport: { width: 1400, height: 1800 },
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (message) => {
    if (message.type() === 'error') result.console.push(message.text());
  });
  await page.goto(config.url, { timeout: remaining() });
  await page.waitForFunction(() => window.jupyterapp && window.jupyterapp.shell.currentWidget
    && window.jupyterapp.shell.currentWidget.content && window.jupyterapp.shell.currentWidget.content.widgets, null,
  { timeout: remaining() });
  await page.waitForFunction(() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return kernel && kernel.status === 'idle';
  }, null, { timeout: remaining(), polling: 500 });

  // Run every cell above the one that waits for training, so the kernel is idle while the trainer
  // runs in its background thread and the buttons can be tried.
  const waitIndex = await page.evaluate((marker) => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    const index = notebook.widgets.findIndex((cell) => cell.model.sharedModel.getSource().includes(marker));
    if (index < 0) return -1;
    notebook.activeCellIndex = index;
    return index;
  }, config.waitMarker);
  if (waitIndex < 0) throw new Error(`no cell contains the marker ${JSON.stringify(config.waitMarker)}`);
  result.waitIndex = waitIndex;
  await page.evaluate(() => window.jupyterapp.commands.execute('notebook:run-all-above'));

  const first = await waitFor(page, (o) => o && stepOf(o) >= 1 && o.figures.losses && o.figures.losses.points > 0,
    'the dashboard and its first step', 1000);
  result.first = first;
  const later = await waitFor(page, (o) => o && stepOf(o) > stepOf(first) && o.figures.losses.points > first.figures.losses.points,
    'a later step in the plots', 500);
  result.later = later;
  await page.screenshot({ path: config.screenshot.replace(/\.png$/, '-running.png'), fullPage: true });

  // Pause: the button label turns to Resume, the status line reads paused and the step count stays.
  // A step already running when the pause was requested still finishes, so the check waits
  // 1.5 step times (measured above) before and between its two readings.
  const stepMs = (later.time - first.time) / Math.max(stepOf(later) - stepOf(first), 1);
  const pauseCheckMs = Math.max(config.pauseCheckMs, 1.5 * stepMs);
  result.stepMs = stepMs;
  await page.click('.rc-nbkit-dashboard .rc-nbkit-pause');
  const paused = await waitFor(page, (o) => o && o.pauseLabel === 'Resume' && o.status.includes('paused'), 'the paused state', 250);
  await page.waitForTimeout(pauseCheckMs);
  const pausedBefore = await observe(page);
  await page.waitForTimeout(pauseCheckMs);
  const pausedAfter = await observe(page);
  result.pause = { paused, before: stepOf(pausedBefore), after: stepOf(pausedAfter) };

  await page.click('.rc-nbkit-dashboard .rc-nbkit-pause');
  const resumed = await waitFor(page, (o) => o && stepOf(o) > stepOf(pausedAfter), 'a step after resuming', 500);
  result.resumed = { step: stepOf(resumed), label: resumed.pauseLabel };

  // Run the rest of the notebook, the wait cell first, skipping cells flagged `#| slow` as nbdev-test does.
  const rest = await page.evaluate((start) => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    const indices = [];
    notebook.widgets.forEach((cell, index) => {
      if (index >= start && cell.model.type === 'code' && !/^#\|\s*slow\b/m.test(cell.model.sharedModel.getSource())) indices.push(index);
    });
    return indices;
  }, waitIndex);
  result.ranBelow = rest;
  for (const index of rest) {
    await page.evaluate((cellIndex) => {
      const panel = window.jupyterapp.shell.currentWidget;
      panel.content.activeCellIndex = cellIndex;
      panel.content.deselectAll();
      return window.jupyterapp.commands.execute('notebook:run-cell');
    }, index);
    await page.waitForTimeout(500);
    while (!(await kernelIdle(page))) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for cell ${index}`);
      await page.waitForTimeout(500);
    }
  }
  const final = await observe(page);
  result.final = final;
  result.cells = await page.evaluate(() => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    return notebook.widgets.map((cell) => ({
      type: cell.model.type,
      slow: /^#\|\s*slow\b/m.test(cell.model.sharedModel.getSource()),
      executionCount: cell.model.executionCount === undefined ? null : cell.model.executionCount,
      errors: cell.model.type === 'code'
        ? cell.model.outputs.toJSON().filter((output) => output.output_type === 'error').map((output) => `${output.ename}: ${output.evalue}`)
        : [],
    }));
  });
  await page.screenshot({ path: config.screenshot, fullPage: true });
} catch (error) {
  result.errors.push(String(error && error.stack ? error.stack : error));
  try {
    const page = context.pages()[0];
    if (page) await page.screenshot({ path: config.screenshot.replace(/\.png$/, '-failed.png'), fullPage: true });
  } catch (screenshotError) {
    result.errors.push(`screenshot failed: ${screenshotError}`);
  }
} finally {
  save();
  await context.close();
}
