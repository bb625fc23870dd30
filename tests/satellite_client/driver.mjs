// Drives the published electric-sql@0.4.3 client (better-sqlite3 driver)
// for Electric's end-to-end tests.
//
// Usage: node driver.mjs CONFIG_JSON
//   CONFIG_JSON = {"db": path, "port": n, "token": str, "ssl": bool (wss://; trust the CA
//                  through NODE_EXTRA_CA_CERTS),
//                  "tables": [{"name", "columns": [{"name", "type"}], "pk": [..]}]}
// Then reads one JSON command per stdin line and answers one JSON line each:
//   {"id": n, "op": "exec", "sql": "...", "args": [...]}   -> {"id": n, "changes": k}
//   {"id": n, "op": "query", "sql": "...", "args": [...]}  -> {"id": n, "rows": [...]}
//   {"id": n, "op": "stop"}                                -> {"id": n, "stopped": true}, then exit
// Errors answer {"id": n, "error": "..."}.  Startup prints {"event": "ready", "clientId": ...}.
import crypto from 'node:crypto'
import readline from 'node:readline'
import Database from 'better-sqlite3'
import { electrify } from 'electric-sql/node'
import { globalRegistry } from 'electric-sql/satellite'

const config = JSON.parse(process.argv[2])

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

process.on('uncaughtException', (e) => {
  out({ event: 'crash', error: String(e && e.stack ? e.stack : e) })
  process.exit(3)
})
process.on('unhandledRejection', (e) => {
  out({ event: 'unhandled', error: String(e && e.stack ? e.stack : e) })
})

function q(name) {
  return '"' + name.replace(/"/g, '""') + '"'
}

// The statements the electric CLI of the period generated per table: the
// table, its trigger toggle, and triggers that record every write in the
// client's oplog.
function tableStatements(t) {
  const cols = t.columns.map((c) => `${q(c.name)} ${c.type}`).join(', ')
  const json = (prefix, names) => 'json_object(' + names.map((n) => `'${n}', ${prefix}.${q(n)}`).join(', ') + ')'
  const all = t.columns.map((c) => c.name)
  const when = `WHEN 1 == (SELECT flag from _electric_trigger_settings WHERE tablename == 'main.${t.name}')`
  const oplog = (optype, pkFrom, newRow, oldRow) =>
    `INSERT INTO _electric_oplog (namespace, tablename, optype, primaryKey, newRow, oldRow, timestamp) ` +
    `VALUES ('main', '${t.name}', '${optype}', ${json(pkFrom, t.pk)}, ${newRow}, ${oldRow}, NULL);`
  return [
    `CREATE TABLE IF NOT EXISTS ${q(t.name)} (${cols}, PRIMARY KEY (${t.pk.map(q).join(', ')}))`,
    `INSERT OR IGNORE INTO _electric_trigger_settings(tablename, flag) VALUES ('main.${t.name}', 1)`,
    `DROP TRIGGER IF EXISTS insert_main_${t.name}_into_oplog`,
    `CREATE TRIGGER insert_main_${t.name}_into_oplog AFTER INSERT ON main.${q(t.name)} ${when}
     BEGIN ${oplog('INSERT', 'new', json('new', all), 'NULL')} END`,
    `DROP TRIGGER IF EXISTS update_main_${t.name}_into_oplog`,
    `CREATE TRIGGER update_main_${t.name}_into_oplog AFTER UPDATE ON main.${q(t.name)} ${when}
     BEGIN ${oplog('UPDATE', 'new', json('new', all), json('old', all))} END`,
    `DROP TRIGGER IF EXISTS delete_main_${t.name}_into_oplog`,
    `CREATE TRIGGER delete_main_${t.name}_into_oplog AFTER DELETE ON main.${q(t.name)} ${when}
     BEGIN ${oplog('DELETE', 'old', 'NULL', json('old', all))} END`,
  ]
}

const body = config.tables.flatMap(tableStatements)
const migrations = [
  {
    satellite_body: body,
    encoding: 'escaped',
    name: '20230101_000000_000_tables',
    sha256: crypto.createHash('sha256').update(body.join('\n')).digest('hex'),
  },
]

const original = new Database(config.db)
const db = await electrify(
  original,
  {
    app: 'electric-test',
    env: 'test',
    migrations,
    replication: { host: '127.0.0.1', port: config.port, ssl: !!config.ssl },
    console: { host: '127.0.0.1', port: 1, ssl: false },
    debug: !!config.debug,
  },
  {
    console: { token: async () => ({ token: config.token, refreshToken: '' }) },
  },
)

const clientId = original.prepare("SELECT value FROM _electric_meta WHERE key = 'clientId'").get().value
out({ event: 'ready', clientId })

const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  if (!line.trim()) continue
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (e) {
    out({ error: `bad command: ${e}` })
    continue
  }
  try {
    if (cmd.op === 'exec') {
      const info = db.prepare(cmd.sql).run(...(cmd.args || []))
      out({ id: cmd.id, changes: info.changes })
    } else if (cmd.op === 'query') {
      out({ id: cmd.id, rows: original.prepare(cmd.sql).all(...(cmd.args || [])) })
    } else if (cmd.op === 'stop') {
      await globalRegistry.stopAll()
      original.close()
      out({ id: cmd.id, stopped: true })
      process.exit(0)
    } else {
      out({ id: cmd.id, error: `unknown op ${cmd.op}` })
    }
  } catch (e) {
    out({ id: cmd.id, error: String(e) })
  }
}
