// Preloaded (`node -r`) into every file of the vendored node-postgres suite, direct and through
// pgid alike: each test gets 30 s instead of the suite's 5 s. The suite checks behaviour; a
// wall-clock budget such as gh-issues/1105's 5,000 round trips in 5 s measures the machine
// (a debug build of pgid on a busy 2-core CI runner), and would make the comparison flaky.
const path = require('path')
const Suite = require(path.resolve('test/suite.js'))
const run = Suite.prototype.run
Suite.prototype.run = function (test, cb) {
  test.timeout = Math.max(test.timeout, 30000)
  return run.call(this, test, cb)
}
