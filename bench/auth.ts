/**
 * The auth service under load: joins/s, renewals/s (a new key and a new mutual-TLS
 * connection each, as a real agent renews), heartbeats/s and database certificate
 * issues/s (keep-alive), at concurrency 1/8/32/128, with p50/p99 latency and the auth
 * server's CPU milliseconds per operation (from /proc, the server runs in its own process).
 *
 *   npm run bench -- auth            or   npx node bench/auth.ts [--seconds 3] [--concurrency 1,8,32,128]
 *
 * SQLite only for now (the store in WAL mode on a temp file). The machine is usually
 * shared: the foreign load seen during each run is printed next to it.
 */
import { parseArgs } from 'node:util'
import path from 'node:path'
import type https from 'node:https'
import { AuthClient } from '../src/agent/auth-client.ts'
import { startAuthServer } from '../src/auth/server.ts'
import type { CreatedToken } from '../src/auth/admin.ts'
import { SqliteStore } from '../src/storage/sqlite.ts'
import { silentLogger } from '../src/core/log.ts'
import { ForeignLoad, cpuSeconds, startRole, withBenchDir } from './_common.ts'
import { heartbeat, join, newKey, renew, type TestIdentity } from '../test/helpers/identity.ts'

const { values } = parseArgs({
  options: {
    role: { type: 'string' },
    dir: { type: 'string' },
    seconds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '1,8,32,128' },
  },
})

if (values.role === 'memid') {
  // The auth server: SQLite store, one bot whose role grants a database, tokens on request.
  const store = SqliteStore.open(path.join(values.dir as string, 'memid.db'))
  const server = await startAuthServer({
    store, listen: '127.0.0.1:0', clusterName: 'bench', logger: silentLogger(), joinRate: 1e9, retention: false,
  })
  await server.admin.addRole({ name: 'r', databases: ['orders'], dbUsers: ['app'], dbNames: ['*'] })
  await server.admin.addResource('db', { name: 'orders', uri: 'postgres://127.0.0.1:5432' })
  await server.admin.addBot({ name: 'bench', roles: ['r'], maxTtl: '1h' })
  process.send?.({ addr: server.address, caPin: server.caPin })
  process.on('message', (m: { tokens?: number }) => {
    void (async () => {
      const tokens: string[] = []
      for (let i = 0; i < (m.tokens ?? 0); i++) tokens.push(((await server.admin.addToken({ bot: 'bench', ttl: '1h' })) as CreatedToken).token)
      process.send?.({ tokens })
    })()
  })
} else {
  await main()
}

interface Result {
  ops: number
  seconds: number
  p50: number
  p99: number
  cpuMsPerOp: number
  foreign: number
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN
}

async function main(): Promise<void> {
  const seconds = Number(values.seconds)
  const levels = (values.concurrency as string).split(',').map(Number)
  await withBenchDir('memid-bench-auth-', async (dir, own) => {
    const role = startRole(new URL(import.meta.url).pathname, 'memid', ['--dir', dir])
    own(role.child)
    const { addr, caPin } = await role.next() as { addr: string; caPin: string }
    const tokens = async (n: number): Promise<string[]> => {
      role.child.send({ tokens: n })
      return (await role.next()).tokens as string[]
    }
    const clients: AuthClient[] = []
    const clientFor = async (i: number): Promise<AuthClient> => {
      while (clients.length <= i) {
        const c = new AuthClient({ server: addr, caPins: [caPin] })
        await c.bootstrap()
        clients.push(c)
      }
      return clients[i] as AuthClient
    }
    const load = new ForeignLoad(() => [role.child.pid])

    /** Runs `op` from `workers` loops for `seconds`; each worker keeps its own state. */
    async function run<S>(workers: number, setup: (w: number) => Promise<S>, op: (s: S) => Promise<S>): Promise<Result> {
      const states = await Promise.all(Array.from({ length: workers }, (_, w) => setup(w)))
      const lat: number[] = []
      const cpu0 = cpuSeconds(role.child.pid)
      load.begin()
      const t0 = performance.now()
      const until = t0 + seconds * 1000
      await Promise.all(states.map(async (s0) => {
        let s = s0
        while (performance.now() < until) {
          const a = performance.now()
          s = await op(s)
          lat.push(performance.now() - a)
        }
      }))
      const elapsed = (performance.now() - t0) / 1000
      load.end()
      const cpu = cpuSeconds(role.child.pid) - cpu0
      lat.sort((x, y) => x - y)
      return { ops: lat.length, seconds: elapsed, p50: pct(lat, 0.5), p99: pct(lat, 0.99), cpuMsPerOp: (cpu * 1000) / lat.length, foreign: load.share }
    }

    const drop = (id: TestIdentity) => (id.caller.agent as https.Agent).destroy()
    const rows: string[][] = []
    const show = (what: string, c: number, r: Result) => {
      rows.push([what, String(c), (r.ops / r.seconds).toFixed(0), r.p50.toFixed(1), r.p99.toFixed(1), r.cpuMsPerOp.toFixed(2), `${Math.round(r.foreign * 100)}%`])
      console.log(`${what.padEnd(22)} c=${String(c).padEnd(4)} ${(r.ops / r.seconds).toFixed(0).padStart(6)}/s  p50 ${r.p50.toFixed(1).padStart(6)} ms  p99 ${r.p99.toFixed(1).padStart(6)} ms  server CPU ${r.cpuMsPerOp.toFixed(2)} ms/op  (foreign load ${Math.round(r.foreign * 100)}%)`)
    }

    for (const c of levels) {
      // Joins: a token each, drawn from a pool made before the clock starts.
      const pool = await tokens(Math.ceil(seconds * 600) + c * 50)
      show('join', c, await run(c, (w) => clientFor(w), async (client) => {
        const t = pool.pop()
        if (t === undefined) throw new Error('bench ran out of join tokens; raise the pool')
        drop(await join(client, t))
        return client
      }))
      const ids = async (w: number) => {
        const client = await clientFor(w)
        return { client, id: await join(client, (await tokens(1))[0] as string) }
      }
      show('renew (new conn each)', c, await run(c, ids, async (s) => {
        const next = await renew(s.client, s.id)
        await heartbeat(s.client, next) // the agent confirms the generation it now holds
        drop(s.id)
        return { client: s.client, id: next }
      }))
      show('heartbeat (keep-alive)', c, await run(c, ids, async (s) => {
        await heartbeat(s.client, s.id)
        return s
      }))
      show('db cert (keep-alive)', c, await run(c, ids, async (s) => {
        await s.client.issueDb(s.id.caller, { publicKey: newKey().publicKey, service: 'orders', username: 'app' })
        return s
      }))
    }
    for (const cl of clients) cl.close()
    console.log('\nSQLite store; the renewal row includes the heartbeat that confirms the new generation (2 requests).')
    console.log('Indicative only when the foreign load is high: this 2-core machine is shared.')
  })
}
