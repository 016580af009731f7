/**
 * The built CLI as `npm run build` ships it (tsc's dist/ with the thread entry points
 * bundled by scripts/bundle.ts): `memid start` from dist/ joins, runs the kube proxy and
 * the database tunnel on worker threads loaded from the bundled worker and thread modules,
 * hands them a renewed credential, and stops cleanly. The other integration tests run the
 * CLI from src/, so this is the one that would see a bundle that loads but cannot find its
 * worker, a thread module or a lazily loaded chunk.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { eventually, MemidProcess, runMemid, startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'

const DIST_MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/cli/main.js')
const bundled = (() => {
  try {
    return readFileSync(DIST_MAIN, 'utf8').includes('__memidDist')
  } catch {
    return false
  }
})()

interface WorkerView {
  status: string
  serial?: string
}

describe('memid start from the bundled dist/', { skip: bundled ? false : 'dist/ is not bundled: run npm run build' }, () => {
  let auth: AuthFixture
  let tmp: { dir: string; cleanup: () => void }
  let agent: MemidProcess
  let control = ''

  const status = async () => {
    const r = await runMemid(['status', '--control-socket', control, '--format', 'json'])
    assert.equal(r.code, 0, r.stderr)
    return JSON.parse(r.stdout) as { services: { name: string; serial?: string; workers?: WorkerView[] }[] }
  }
  const workersOf = async (name: string) => (await status()).services.find((s) => s.name === name)?.workers ?? []

  before(async () => {
    tmp = tempDir('memid-dist-')
    auth = await startAuth()
    for (const args of [['kube', 'add', 'prod', '--server', 'https://127.0.0.1:6443'], ['dbs', 'add', 'orders', '--uri', 'postgres://127.0.0.1:5432']]) {
      const r = await auth.cli(args)
      assert.equal(r.code, 0, r.stderr)
    }
    const token = await auth.bot('dist', ['--logins', 'deploy', '--kube-clusters', 'prod', '--kube-users', 'ci', '--databases', 'orders', '--db-users', 'app', '--db-names', 'orders'])
    const home = path.join(tmp.dir, 'agent')
    mkdirSync(home, { mode: 0o700 })
    writeFileSync(path.join(home, 'token'), token, { mode: 0o600 })
    control = path.join(home, 'control.sock')
    // The upstreams are never dialled: certificates are issued without contacting them.
    agent = new MemidProcess(process.execPath, [
      DIST_MAIN, 'start', '--auth-server', auth.addr, '--ca-pin', auth.caPin, '--token-file', path.join(home, 'token'), '--workers', '2',
      '--control-socket', control, '--ssh-agent', path.join(home, 'agent.sock'),
      '--kube-proxy', '127.0.0.1:0=prod', '--db-tunnel', '127.0.0.1:0=orders/app/orders',
    ])
    await agent.waitFor('agent ready', 60_000)
  })

  after(async () => {
    await agent?.stop()
    await auth?.stop()
    tmp?.cleanup()
  })

  it('serves the TCP services from both bundled worker threads', async () => {
    for (const name of ['kube-proxy:prod', 'db-tunnel:orders']) {
      await eventually(async () => {
        const w = await workersOf(name)
        return w.length === 2 && w.every((x) => x.status === 'ok')
      }, 20_000, `${name}: both workers ok`)
    }
  })

  it('a renewal (SIGHUP) reaches every worker', async () => {
    const old = (await workersOf('db-tunnel:orders')).map((w) => w.serial)
    agent.signal('SIGHUP')
    await eventually(async () => {
      const w = await workersOf('db-tunnel:orders')
      return w.length === 2 && w.every((x, i) => x.serial !== undefined && x.serial !== old[i])
    }, 20_000, 'a new serial in both tunnel workers')
  })

  it('stops on SIGTERM with exit 0', async () => {
    assert.equal(await agent.stop(), 0)
  })
})

describe('zod in the bundles', { skip: bundled ? false : 'dist/ is not bundled: run npm run build' }, () => {
  it('speaks English only: its messages still reach a config error, and no other locale is shipped', () => {
    const tmp = tempDir('memid-dist-zod-')
    try {
      const config = path.join(tmp.dir, 'agent.yaml')
      writeFileSync(config, `version: v1\nauth_server: 127.0.0.1:1\nca_pins: [sha256:${'a'.repeat(64)}]\nonboarding: {token_file: ${config}}\nservices: 5\n`)
      let stderr = ''
      try {
        execFileSync(process.execPath, [DIST_MAIN, 'start', '--config', config], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] })
      } catch (err) {
        stderr = String((err as { stderr?: string }).stderr)
      }
      assert.equal(stderr.trim(), 'memid: services: Invalid input: expected array, received number')
    } finally {
      tmp.cleanup()
    }
    const dist = path.dirname(path.dirname(DIST_MAIN))
    const files = [
      ...readdirSync(path.join(dist, 'chunks')).map((f) => path.join(dist, 'chunks', f)),
      DIST_MAIN, path.join(dist, 'cli', 'program.js'), path.join(dist, 'services', 'data-plane-worker.js'), path.join(dist, 'auth', 'api-worker.js'),
    ]
    const locales = new Set(files.flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/^\/\/ node_modules\/zod\/v4\/locales\/([\w-]+)\.js$/gm)].map((m) => m[1])))
    assert.deepEqual([...locales], ['en'])
  })
})
