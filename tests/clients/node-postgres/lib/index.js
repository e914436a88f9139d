'use strict'
// The vendored tests require the package from its source tree (`require('../../lib')`): hand
// them the installed node-postgres instead (tests/clients/node_modules/pg).
module.exports = require('pg')
