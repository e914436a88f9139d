// A reviewer at pgid's approval page, in Debian's headless Chromium (playwright-core).
//
// Signs in through the identity provider's form as LOGIN, prints "signed-in", then
//   MODE=approve|deny: waits for the request whose statement contains EXPECT to appear (live,
//     without a reload), writes COMMENT, clicks the button, waits for the outcome under "Recently
//     decided", saves a screenshot to SCREENSHOT and prints "decided <id>";
//   MODE=look: prints one JSON line {text, forged, badCsrf}: the page's text, and the HTTP status
//     of a decision on REQUEST posted from the page with its own and with a wrong CSRF token.
import { chromium } from 'playwright-core';

const env = process.env;
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  // pgid's broker certificate comes from the test's own CA.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  await page.goto(env.PAGE);
  await page.fill('input[name=login]', env.LOGIN);
  await page.fill('input[name=password]', 'any password');
  await page.click('button[type=submit]');
  const at = (prefix) => (u) => u.pathname.startsWith(prefix);
  await page.waitForURL((u) => at('/approvals')(u) || at('/interaction')(u));
  if (at('/interaction')(new URL(page.url()))) {
    await page.click('button[type=submit]'); // the provider's consent form
  }
  await page.waitForURL((u) => u.pathname === '/approvals');
  console.log('signed-in');

  if (env.MODE === 'look') {
    const csrf = await page.locator('main').getAttribute('data-csrf');
    const post = (token) => page.evaluate(async ({ token, id }) => {
      const body = new URLSearchParams({ csrf: token, id, action: 'approve', comment: 'forged' });
      const r = await fetch('/approvals/decide', { method: 'POST', body });
      return r.status;
    }, { token, id: env.REQUEST });
    const forged = await post(csrf);
    const badCsrf = await post('not-the-token');
    const text = await page.locator('body').innerText();
    console.log(JSON.stringify({ text, forged, badCsrf }));
  } else {
    const card = page.locator('article.request', { hasText: env.EXPECT });
    await card.waitFor();
    const id = await card.getAttribute('data-id');
    await card.locator('textarea[name=comment]').fill(env.COMMENT || '');
    await page.screenshot({ path: env.SCREENSHOT.replace(/\.png$/, '-pending.png'), fullPage: true });
    await card.locator(`button[value=${env.MODE}]`).click();
    await page.waitForURL((u) => u.searchParams.has('decided'));
    const outcome = env.MODE === 'approve' ? 'approved' : 'denied';
    await page.locator(`#recent tr[data-id="${id}"] td.state.${outcome}`).waitFor();
    await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
    console.log(`decided ${id}`);
  }
} finally {
  await browser.close();
}
