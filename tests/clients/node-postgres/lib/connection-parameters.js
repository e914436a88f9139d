'use strict'
// See index.js: the installed node-postgres's module of the same name.
module.exports = require('pg/lib/connection-parameters')
