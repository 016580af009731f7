/**
 * Renewals only (or other per-bot operations) against one bench auth server (bench/auth.ts's
 * server role, SQLite), to profile the server under that load alone:
 *
 *   MEMID_BENCH_CPU_PROF=DIR node bench/_renew-profile.ts          V8 CPU profile of the server
 *   MEMID_BENCH_NODE_FLAGS=--perf-basic-prof-only-functions PERF=out.data node bench/_renew-profile.ts
 *                                                                  perf record -g of the server
 *   CONC=32 SECS=8 WARM=3                                          bots, seconds measured, seconds of warm-up before (defaults)
 *   OP=renew,connect,floor ROUNDS=3                                several operations, alternated round by round
 *   RATE=150                                                       operations per second in all (paced), instead of as fast as possible
 *
 * Operations (OP):
 *   renew      what bench/auth.ts does: a new key, the renew request (on the connection the
 *              last heartbeat left open), then a heartbeat with the new identity over a new
 *              mutual-TLS connection.
 *   agent      a renewal as a real agent makes it: renewals are minutes apart, so the server
 *              has closed the identity's connection (5 s idle) and the renew request needs a
 *              new one too: two full handshakes per renewal.
 *   heartbeat  a keep-alive heartbeat.
 *   connect    a heartbeat over a new mutual-TLS connection each (the handshake's share).
 *   floor      `connect` against a bare node:https server in its own process, with the auth
 *              server's TLS settings (P-256 certificates, client certificate requested and
 *              verified, the same ciphers and options) and no memid code: what Node and
 *              OpenSSL cost per connection under the same load.
 *
 * Prints, per operation and round, operations/s and the server's CPU ms per operation (from
 * /proc), then the median per operation. CPU per operation on this machine depends on the
 * load's shape (fewer requests per wake-up cost more each), so compare operations measured
 * together, alternated, at the same RATE.
 */
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import https from 'node:https'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { AuthClient } from '../src/agent/auth-client.ts'
import { buildClientContext } from '../src/pki/tls-context.ts'
import { AUTH_NODE_FLAGS } from '../src/core/gc.ts'
import { askTokens, benchCa, benchLeaf, cpuSeconds, median, startRole } from './_common.ts'
import { serveFloor, type FloorMaterial } from './_floor.ts'
import { heartbeat, join, renew } from '../test/helpers/identity.ts'

async function main(): Promise<void> {
  const seconds = Number(process.env.SECS ?? 8)
  const conc = Number(process.env.CONC ?? 32)
  const rate = Number(process.env.RATE ?? 0)
  const rounds = Number(process.env.ROUNDS ?? 1)
  const ops = (process.env.OP ?? 'renew').split(',')
  const dir = mkdtempSync(path.join(tmpdir(), 'memid-renew-profile-'))
  mkdirSync(path.join(dir, 'r0'), { mode: 0o700 })
  const role = startRole(new URL('./auth.ts', import.meta.url).pathname, 'memid', ['--dir', path.join(dir, 'r0'), '--store', `sqlite:${path.join(dir, 'memid.db')}`, '--workers', '1', '--setup'], AUTH_NODE_FLAGS)
  const floor = ops.includes('floor') ? startRole(new URL(import.meta.url).pathname, 'floor') : undefined
  try {
    const m = await role.next() as { addr: string; caPin: string }
    const tokens = await askTokens(role, conc)
    const bots = await Promise.all(tokens.map(async (t) => {
      const client = new AuthClient({ server: m.addr, caPins: [m.caPin] })
      await client.bootstrap()
      return { client, id: await join(client, t), floorAgent: undefined as https.Agent | undefined }
    }))
    let floorPort = 0
    if (floor !== undefined) {
      const ca = await benchCa('floor')
      const server = await benchLeaf(ca, 'localhost', 'server', { ipAddresses: ['127.0.0.1'] })
      const client = await benchLeaf(ca, 'bot', 'client')
      floor.child.send({ keyPem: server.keyPem, certPem: server.certPem, caPem: ca.certPem } satisfies FloorMaterial)
      floorPort = (await floor.next()).port as number
      const { createPrivateKey } = await import('node:crypto')
      const secureContext = buildClientContext({ key: createPrivateKey(client.keyPem), certPem: client.certPem, caPem: ca.certPem })
      for (const b of bots) b.floorAgent = new https.Agent({ keepAlive: true, secureContext, servername: 'localhost', maxSockets: 1 })
    }
    const floorHeartbeat = (agent: https.Agent) => new Promise<void>((resolve, reject) => {
      const body = JSON.stringify({ hostname: 'test', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] })
      const req = https.request({ host: '127.0.0.1', port: floorPort, method: 'POST', path: '/v1/heartbeat', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
        res.resume()
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`floor answered ${res.statusCode}`))))
      })
      req.on('error', reject)
      req.end(body)
    })
    const drop = (a: https.Agent) => a.destroy()
    const once = async (b: (typeof bots)[number], op: string) => {
      if (op === 'renew' || op === 'agent') {
        // agent: the identity's connection is gone by the time a real agent renews (see the header).
        if (op === 'agent') drop(b.id.caller.agent)
        const next = await renew(b.client, b.id)
        await heartbeat(b.client, next)
        drop(b.id.caller.agent)
        b.id = next
      } else if (op === 'floor') {
        await floorHeartbeat(b.floorAgent as https.Agent)
        drop(b.floorAgent as https.Agent)
      } else {
        await heartbeat(b.client, b.id)
        if (op === 'connect') drop(b.id.caller.agent)
      }
    }
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
    const load = async (op: string, secs: number) => {
      let n = 0
      const start = performance.now()
      // RATE: each bot starts its operations every conc/RATE seconds, staggered.
      const every = rate > 0 ? (conc / rate) * 1000 : 0
      await Promise.all(bots.map(async (b, i) => {
        for (let k = 0; performance.now() - start < secs * 1000; k++) {
          const due = start + every * (i / conc + k)
          if (every > 0 && due > performance.now()) await sleep(due - performance.now())
          await once(b, op)
          n++
        }
      }))
      return n
    }
    // WARM seconds of the same load first, unmeasured: V8 compiles the hot paths then.
    for (const op of ops) await load(op, Number(process.env.WARM ?? 3))
    const perf = process.env.PERF
      ? spawn('perf', ['record', '-F', '999', '-g', '-o', process.env.PERF, '-p', String(role.child.pid), '--', 'sleep', String(seconds)], { stdio: 'inherit' })
      : undefined
    const perfDone = perf && new Promise((r) => perf.once('exit', r))
    const perOp = new Map<string, number[]>()
    for (let r = 0; r < rounds; r++) {
      for (const op of ops) {
        const pid = op === 'floor' ? floor?.child.pid : role.child.pid
        const cpu0 = cpuSeconds(pid)
        const t0 = performance.now()
        const n = await load(op, seconds)
        const elapsed = (performance.now() - t0) / 1000
        const ms = ((cpuSeconds(pid) - cpu0) * 1000) / n
        perOp.set(op, [...(perOp.get(op) ?? []), ms])
        console.log(`${op}: ${n} in ${elapsed.toFixed(1)} s = ${(n / elapsed).toFixed(0)}/s, server CPU ${ms.toFixed(2)} ms/op`)
      }
    }
    if (rounds > 1) for (const [op, v] of perOp) console.log(`${op}: median ${median(v).toFixed(2)} ms/op over ${v.length} rounds`)
    await perfDone
    for (const b of bots) {
      b.client.close()
      b.floorAgent?.destroy()
    }
  } finally {
    // SIGTERM: the server role exits normally, so --cpu-prof writes its profile.
    for (const r of [role, floor]) {
      if (r === undefined || r.child.exitCode !== null || r.child.signalCode !== null) continue
      const exited = new Promise((resolve) => r.child.once('exit', resolve))
      r.child.kill('SIGTERM')
      await exited
    }
    rmSync(dir, { recursive: true, force: true })
  }
}

if (process.argv.includes('floor')) await serveFloor()
else await main()
