// Flags for Debian's chromium in the browser tests: headless, no sandbox (tests may run as root in
// containers), and nothing that contacts another host (sync, component updates, background requests).
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
