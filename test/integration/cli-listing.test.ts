// The CLI's listings as a script reads them (`--format json`, stdout a pipe): the admin
// API's page goes to stdout as it streams, never parsed, re-indented or held whole.
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import http from 'node:http'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { SqliteStore } from '../../src/storage/sqlite.ts'
import { memidBin, runMemid } from '../fixtures/memid.ts'
import { acceptUnused, instance, token } from '../helpers/store-contract.ts'
import { adminRaw, serveAdmin } from '../helpers/admin-socket.ts'

let dir: string
let store: SqliteStore
let server: { close(): Promise<void> }

/** What the admin socket answers, unparsed. */
const raw = async (sock: string, p: string, body?: unknown) => (await adminRaw(sock, p, body)).text

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-cli-listing-'))
  store = SqliteStore.open(':memory:')
  for (let k = 0; k < 2500; k++) {
    const name = `tok-${k.toString(16).padStart(12, '0')}`
    await store.createToken(token(name, 'ci'))
    await store.consumeToken(name, acceptUnused(instance(name, { bot: 'ci', createdAt: new Date(Date.UTC(2030, 0, 1) + k * 1000).toISOString() })))
    await store.appendAudit({ type: 'join', success: true, bot: 'ci', fields: { k } })
  }
  server = await serveAdmin(store, path.join(dir, 'admin.sock'))
})
after(async () => {
  await server.close()
  await store.close()
  rmSync(dir, { recursive: true, force: true })
})

describe('memid listings as JSON for a script', () => {
  it('a page is the admin API\'s bytes as they came, then a newline: instances, bots, tokens and audit', async () => {
    const sock = path.join(dir, 'admin.sock')
    const next = JSON.parse(await raw(sock, '/v1/instances?limit=5')).next as string
    const cases: [string[], string, unknown?][] = [
      [['get', 'bot_instance', '--limit', '2000'], '/v1/instances?limit=2000'],
      [['get', 'bot_instance/ci', '--limit', '5', '--after', next], `/v1/instances?limit=5&after=${encodeURIComponent(next)}&bot=ci`],
      [['tokens', 'ls'], '/v1/tokens?limit=1000'],
      [['bots', 'ls'], '/v1/bots?limit=1000'],
      [['audit', '--type', 'join', '--limit', '3'], '/v1/audit', { type: 'join', limit: 3 }],
    ]
    for (const [args, apiPath, body] of cases) {
      const r = await runMemid([...args, '--format', 'json', '--data-dir', dir])
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.stdout, `${await raw(sock, apiPath, body)}\n`, args.join(' '))
      assert.doesNotThrow(() => JSON.parse(r.stdout))
    }
    const big = await runMemid(['get', 'bot_instance', '--limit', '2000', '--format', 'json', '--data-dir', dir])
    assert.equal(JSON.parse(big.stdout).items.length, 2000)
    assert.equal(big.stdout.split('\n').length, 2, 'one line of JSON, not indented')
  })

  it('an admin API error is still one line naming it, with nothing on stdout', async () => {
    const r = await runMemid(['get', 'bot_instance', '--limit', '5', '--after', '%%%', '--format', 'json', '--data-dir', dir])
    assert.notEqual(r.code, 0)
    assert.equal(r.stdout, '')
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
    assert.match(r.stderr, /after|cursor/)
  })

  it('a reader that goes away (| head) ends the listing quietly, exit 0', async () => {
    const child = spawn(memidBin[0], [memidBin[1], 'get', 'bot_instance', '--limit', '2500', '--format', 'json', '--data-dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()))
    child.stdout.destroy()
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
    assert.equal(code, 0, stderr)
    assert.equal(stderr, '')
  })
})

describe('memid listings cut short by the server', () => {
  it('exit non-zero with one line saying the answer stopped in the middle; what came is left as it came', async () => {
    const cut = path.join(dir, 'cut')
    const fake = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.write('{"items":[{"id":"a"},')
      setTimeout(() => res.destroy(), 50)
    })
    mkdirSync(cut, { mode: 0o700 })
    await new Promise<void>((resolve) => fake.listen(path.join(cut, 'admin.sock'), resolve))
    try {
      const r = await runMemid(['get', 'bot_instance', '--format', 'json', '--data-dir', cut])
      assert.notEqual(r.code, 0)
      assert.equal(r.stdout, '{"items":[{"id":"a"},')
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
      assert.match(r.stderr, /stopped in the middle of its answer/)
    } finally {
      fake.closeAllConnections()
      await new Promise((resolve) => fake.close(resolve))
    }
  })
})
